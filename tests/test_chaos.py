"""The chaos run and its invariant checker: pure checks on made-up truths (unit), the checker catching each broken
promise on a real control plane (integration) and on the local stack with its fabric (e2e, root), and a short
chaos run that fails the suite on any violation (e2e)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from cce_net.chaos import Chaos, ChaosConfig, LivePod, Report, Truth, Violation, render, settled_violations
from cce_net.chaos.churn import Ledger, cni_reason
from cce_net.chaos.invariants import cloud_matches_records, duplicate_live_ips
from cce_net.chaos.schedule import fault_kinds, format_schedule, make_schedule
from cce_net.chaos.truth import read_truth
from cce_net.stack import client_settings, read_state
from chassis.bus import Bus
from chassis.kv import Store
from schemas.records import CceEndpoint
from schemas.subjects import ENDPOINTS, endpoint_key
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.cluster import Cluster, eni_control_plane, until
from tests.e2e_stack import running_stack
from tests.privileged import NEEDS_PING_AND_IP

NODE_SHAPE = {"cpus": 8, "memory_mib": 32768}


def named(found: list[Violation], invariant: str, ip: str) -> list[Violation]:
    return [v for v in found if v.invariant == invariant and ip in v.ips and ip in v.detail]


# ---- unit: the schedule and the pure checks -------------------------------------------------------------------


@pytest.mark.unit
def test_the_fault_schedule_is_the_same_for_a_seed_and_has_every_kind() -> None:
    one, two = make_schedule(42, 500, fabric=True), make_schedule(42, 500, fabric=True)
    assert one == two
    assert {f.kind for f in one} == set(fault_kinds(True))
    assert all(1 <= f.at_op <= 425 for f in one)
    assert make_schedule(43, 500, fabric=True) != one
    assert "--seed 42" in format_schedule(42, one)


@pytest.mark.unit
def test_two_live_pods_told_the_same_ip_are_a_duplicate() -> None:
    found = duplicate_live_ips([LivePod("n.a.eth0", "n", "10.0.0.5"), LivePod("n.b.eth0", "n", "10.0.0.5"),
                                LivePod("n.c.eth0", "n", "10.0.0.6")])
    assert [(v.invariant, v.ips, v.keys) for v in found] == [("duplicate-ip", ("10.0.0.5",),
                                                              ("n.a.eth0", "n.b.eth0"))]


@pytest.mark.unit
def test_an_ip_on_our_eni_in_the_cloud_that_no_record_has_is_leaked() -> None:
    truth = Truth(cloud_enis=[{"eniId": "eni-1", "description": "cce-network cluster=x node=n", "status": "inuse",
                               "privateIpSet": [{"privateIpAddress": "10.0.0.2", "primary": True},
                                                {"privateIpAddress": "10.0.0.9", "primary": False}]}])
    found = cloud_matches_records(truth)
    assert [v.invariant for v in found] == ["leaked-eni"]
    assert "eni-1" in found[0].detail


@pytest.mark.unit
def test_a_cni_error_is_coded_by_the_first_word_of_its_details() -> None:
    assert cni_reason({"code": 11, "details": "ServiceUnavailable: [Errno 111] Connection refused"}) == \
        "ServiceUnavailable"
    assert cni_reason({"code": 104, "details": 'ENICapacityExceed {"node": "n"}'}) == "ENICapacityExceed"
    assert cni_reason({"code": 5, "details": ""}) == "uncoded"
    assert cni_reason({"code": 5, "details": "Whatever else"}) == "uncoded"
    assert cni_reason(None) == "uncoded"


# ---- integration: the checker on a real control plane ---------------------------------------------------------


@pytest.fixture
async def cluster(bus: Bus, clean_nats: str, vpc_sim: SimServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with eni_control_plane(bus, vpc_sim, clean_nats, tmp_path) as c:
        yield c


async def settled_pods(cluster: Cluster, admin: SimAdmin) -> list[LivePod]:
    """node-1 with two confirmed pods, and the checker finding nothing wrong with it."""
    inst = await admin.create_instance(name="node-1", **NODE_SHAPE)  # type: ignore[arg-type]
    await cluster.register("node-1", inst)
    pods = []
    for cid in ("pod-a", "pod-b"):
        reply = await cluster.allocate("node-1", cid)
        pods.append(LivePod(endpoint_key("node-1", cid, "eth0"), "node-1", str(reply.endpoint.addresses[0].ip)))
    found: list[Violation] = []

    async def clean() -> bool:
        found[:] = settled_violations(await read_truth(cluster.bus, cluster.sim.url, ""), pods)
        return not found

    try:
        await until(clean, 30, "a settled node with nothing for the checker to find")
    except AssertionError:
        raise AssertionError(f"the checker found, on a healthy node: {found}") from None
    return pods


@pytest.mark.integration
async def test_the_checker_names_two_endpoint_records_holding_one_ip(cluster: Cluster, sim_admin: SimAdmin) -> None:
    pods = await settled_pods(cluster, sim_admin)
    endpoints: Store[CceEndpoint] = await cluster.store(ENDPOINTS)
    item = await endpoints.get(pods[0].key)
    assert item is not None
    intruder = item.value.model_copy(update={"container_id": "intruder"})
    await endpoints.create(endpoint_key("node-1", "intruder", "eth0"), intruder)
    found = settled_violations(await read_truth(cluster.bus, cluster.sim.url, ""), pods)
    assert named(found, "duplicate-ip", pods[0].ip), found
    report = render(Report(ChaosConfig(cluster.logs), [], Ledger(), violations=found))
    assert "RESULT: FAILED" in report and f"[duplicate-ip] {pods[0].ip} is held by 2 endpoint records" in report


@pytest.mark.integration
async def test_the_checker_names_an_ip_in_the_cloud_that_nothing_owns(cluster: Cluster, sim_admin: SimAdmin) -> None:
    pods = await settled_pods(cluster, sim_admin)
    cluster.kill("em-1")  # nobody mirrors the cloud any more: the IP added below stays unknown
    [eni] = [e for e in await cluster.cloud_enis(str((await sim_admin.info())["instances"][0]["id"]))]
    [stray] = await cluster.api().add_private_ips(eni.eni_id, count=1)
    found = settled_violations(await read_truth(cluster.bus, cluster.sim.url, ""), pods)
    assert named(found, "leaked-ip", stray), found


@pytest.mark.integration
async def test_the_checker_names_an_endpoint_ip_that_the_record_moved(cluster: Cluster, sim_admin: SimAdmin) -> None:
    pods = await settled_pods(cluster, sim_admin)
    endpoints: Store[CceEndpoint] = await cluster.store(ENDPOINTS)

    def moved(ep: CceEndpoint | None) -> CceEndpoint | None:
        assert ep is not None
        address = ep.addresses[0].model_copy(update={"ip": IPv4Address("10.255.255.7")})
        return ep.model_copy(update={"addresses": [address]})

    await endpoints.mutate(pods[1].key, moved)
    found = settled_violations(await read_truth(cluster.bus, cluster.sim.url, ""), pods)
    assert named(found, "ip-changed", pods[1].ip), found
    assert named(found, "claim-without-endpoint", pods[1].ip), found


# ---- e2e (root): the kernel as a witness -----------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(300)
@NEEDS_PING_AND_IP[0]
@NEEDS_PING_AND_IP[2]
async def test_the_checker_names_a_pod_whose_host_veth_was_deleted(tmp_path_factory: pytest.TempPathFactory) -> None:
    with running_stack(tmp_path_factory, "vpc-eni", "chk") as stack:
        view = stack.add("default/victim", "node-1")
        state = read_state(stack.state_dir) or {}
        [datapath] = [s["pid"] for s in state["services"] if s["id"] == "node_datapath-node-1"]
        bus = await Bus.connect(client_settings(None, stack.state_dir), name="test-checker")
        try:
            key = endpoint_key("node-1", view["container_id"], "eth0")
            pod = LivePod(key, "node-1", view["ips"][0].split("/")[0], Path(view["netns"]).name)
            sim_token = await asyncio.to_thread(Path(state["sim_admin_token_file"]).read_text)
            nodes = {"node-1": stack.node_ns("node-1"), "node-2": stack.node_ns("node-2")}

            async def truth() -> Truth:
                return await read_truth(bus, state["sim_url"], sim_token.strip(), nodes, [pod.netns])

            await until(lambda: _clean(truth, [pod]), 30, "the pod's kernel state in place")
            record = (await truth()).endpoints[key]
            os.kill(datapath, signal.SIGSTOP)  # no resync puts the veth back while the checker reads
            try:
                await asyncio.to_thread(subprocess.run, ["ip", "-n", nodes["node-1"], "link", "del",
                                                         record.host_veth], check=True)
                found = settled_violations(await truth(), [pod])
            finally:
                os.kill(datapath, signal.SIGCONT)
            assert [v for v in found if v.invariant == "missing-veth" and key in v.detail
                    and record.host_veth in v.detail], found
        finally:
            await bus.close()


async def _clean(truth, pods: list[LivePod]) -> bool:  # type: ignore[no-untyped-def]
    return not settled_violations(await truth(), pods)


# ---- e2e: a short chaos run -----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(420)
async def test_a_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    """500 ADD/DEL on 3 nodes of the control plane under every fault kind; CCE_CHAOS_SEED replays another seed."""
    seed = int(os.environ.get("CCE_CHAOS_SEED", "20261204"))
    config = ChaosConfig(state_dir=tmp_path / "stack", ops=500, nodes=3, concurrency=8, seed=seed, settle_s=120)
    report = await Chaos(config, say=lambda line: None).run()
    text = render(report, max_violations=20)
    print(text)
    assert report.ok, text
    assert sum(report.runner.injected.values()) >= 10 if report.runner else False, text
    assert report.ledger.calls[("ADD", "ok")] >= 100, text
