"""Skip markers of the privileged tier: what a test on real network namespaces needs, each named with its reason."""

from __future__ import annotations

import os
import shutil

import pytest

from cce_net.stack import REFERENCE_PLUGINS  # Debian's containernetworking-plugins

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
NEEDS_PING_AND_IP = [
    NEEDS_ROOT,
    pytest.mark.skipif(shutil.which("ping") is None, reason="needs ping (apt-get install iputils-ping)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip) to inspect namespaces"),
]
NEEDS_CHAIN_PLUGINS = pytest.mark.skipif(
    os.geteuid() != 0 or not all(os.access(REFERENCE_PLUGINS / p, os.X_OK) for p in ("portmap", "bandwidth"))
    or shutil.which("iptables") is None,
    reason="needs root, iptables and Debian's containernetworking-plugins (portmap, bandwidth) in /usr/lib/cni")
