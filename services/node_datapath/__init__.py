"""node_datapath: programs one node's network (ENI links, per-ENI tables and rules, pod veths) with pyroute2."""
