"""The service chassis: what every cce-network service process stands on."""
