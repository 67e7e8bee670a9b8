"""The cloud port (`VpcApi`) shaped by our domain, and its production adapter over bce-python-sdk."""
