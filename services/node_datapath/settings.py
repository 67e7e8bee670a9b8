"""node_datapath's settings (environment `CCE_*`, or the file named by `CCE_CONFIG_FILE`)."""

from __future__ import annotations

from pydantic import Field

from chassis.config import ChassisSettings


class DatapathSettings(ChassisSettings):
    node: str = Field(min_length=1, description="the node this datapath programs (required)")
    datapath_netns: str = Field(
        "", description="the node's network namespace: '' = this process's own, else a name under /run/netns or an "
                        "absolute path (simulated nodes: cce-sim-<instance id>); the process itself stays put")
    datapath_resync_period_s: float = Field(30.0, gt=0, description="full resync of the node this often")
    datapath_gc_grace_s: float = Field(
        10.0, ge=0, description="a stale veth/rule/route is removed only after it stayed stale this long")
    datapath_eni_wait_s: float = Field(10.0, ge=0, description="a pod setup waits this long for its ENI's link")
    datapath_debounce_s: float = Field(0.5, ge=0, description="record changes are coalesced for this long")
