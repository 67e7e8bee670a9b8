"""chassis/netns.py: entering namespaces by name or path, sockets inside namespaces, sysctls, named namespaces and
netlink error wrapping. The namespace tests are privileged (root); every test uses its own namespace names and
removes them."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chassis import netns
from chassis.netns import NetnsError
from tests.privileged import NEEDS_ROOT

root_only = NEEDS_ROOT
_seq = itertools.count()


def own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Unique namespace names for one test; all removed afterwards."""
    n = next(_seq)
    made: list[str] = [f"tn{os.getpid()}-{n}-{i}" for i in range(3)]
    yield made
    for name in made:
        netns.remove_namespace(name)


# ------------------------------------------------------------------------------------------------- pure parts


def test_namespace_paths_by_name_or_absolute_path() -> None:
    assert netns.netns_path("pod-1") == "/run/netns/pod-1"
    assert netns.netns_path("/proc/1/ns/net") == "/proc/1/ns/net"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(NetnsError, match="invalid network namespace name") as info:
            netns.netns_path(bad)
        assert info.value.errno == errno.EINVAL


def test_work_in_a_fresh_thread_returns_its_result_and_wraps_failures() -> None:
    assert netns.in_fresh_thread(lambda: 42, "answer") == 42

    def boom() -> None:
        raise ValueError("no")

    with pytest.raises(NetnsError, match="compute: no"):
        netns.in_fresh_thread(boom, "compute")

    def coded() -> None:
        raise NetnsError("as is", code=errno.ENOENT)

    with pytest.raises(NetnsError, match=r"^as is$") as info:
        netns.in_fresh_thread(coded, "x")
    assert info.value.errno == errno.ENOENT


# ------------------------------------------------------------------------------------------------- privileged


@root_only
def test_create_list_and_remove_named_namespaces(names: list[str]) -> None:
    prefix = names[0].rsplit("-", 1)[0]
    netns.create_namespaces(names[:2])
    netns.create_namespaces(names[:2])  # existing ones are left as they are
    assert netns.list_namespaces(prefix) == sorted(names[:2])
    netns.remove_namespace(names[0])
    netns.remove_namespace(names[0])  # a missing one is fine
    assert netns.list_namespaces(prefix) == [names[1]]


@root_only
def test_sysctls_are_written_in_the_namespace_only(names: list[str]) -> None:
    netns.create_namespaces([names[0]])
    before = own_netns()
    mine = netns.read_sysctls("", ["net/ipv4/conf/lo/rp_filter"])["net/ipv4/conf/lo/rp_filter"]
    wanted = "2" if mine != "2" else "1"
    changed = netns.write_sysctls(names[0], {"net/ipv4/conf/lo/rp_filter": wanted})
    assert changed == [f"{names[0]}: sysctl net/ipv4/conf/lo/rp_filter={wanted}"]
    assert netns.write_sysctls(names[0], {"net/ipv4/conf/lo/rp_filter": wanted}) == []  # already so
    by_path = netns.read_sysctls(f"/run/netns/{names[0]}", ["net/ipv4/conf/lo/rp_filter", "net/nope"])
    assert by_path == {"net/ipv4/conf/lo/rp_filter": wanted, "net/nope": None}
    assert netns.read_sysctls("", ["net/ipv4/conf/lo/rp_filter"])["net/ipv4/conf/lo/rp_filter"] == mine
    assert own_netns() == before  # the caller never moved


@root_only
def test_a_missing_namespace_or_a_plain_file_gives_a_coded_error(tmp_path: Path, names: list[str]) -> None:
    with pytest.raises(NetnsError, match="does not exist") as info:
        netns.check_namespace(names[0])
    assert info.value.errno == errno.ENOENT
    with pytest.raises(NetnsError, match="does not exist"):
        netns.check_namespace(str(tmp_path / "gone"))
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(NetnsError, match="is not a network namespace") as info:
        netns.check_namespace(str(plain))
    assert info.value.errno == errno.EINVAL
    netns.create_namespaces([names[0]])
    netns.check_namespace(names[0])
    netns.check_namespace(f"/run/netns/{names[0]}")


@root_only
async def test_sockets_live_in_their_namespace_and_a_veth_peer_is_created_in_another(names: list[str]) -> None:
    a, b = names[0], names[1]
    netns.create_namespaces([a, b])
    async with netns.iproute(a) as ipr:
        links = await netns.dump("list links", lambda: ipr.link("dump"))
        assert [m.get("ifname") for m in links] == ["lo"]
        fd = os.open(f"/run/netns/{b}", os.O_RDONLY)
        try:
            peer = {"ifname": "eth0", "net_ns_fd": fd}
            await netns.nl("create veth", ipr.link("add", ifname="v-a", kind="veth", peer=peer))
        finally:
            os.close(fd)
        assert await netns.nl("delete missing", ipr.link("del", ifname="nope"), ok=netns.GONE) is None
        with pytest.raises(NetnsError, match=r"delete missing link: .* \(errno 19\)") as info:
            await netns.nl("delete missing link", ipr.link("del", ifname="nope"))
        assert info.value.errno == errno.ENODEV
    async with netns.iproute(f"/run/netns/{b}") as ipr:
        names_b = {m.get("ifname") for m in await netns.dump("list links", lambda: ipr.link("dump"))}
    assert names_b == {"lo", "eth0"}


@root_only
def test_removing_a_namespace_removes_it_from_the_listing(names: list[str]) -> None:
    netns.create_namespaces([names[2]])
    assert Path(f"/run/netns/{names[2]}").exists()
    netns.remove_namespace(names[2])
    assert not Path(f"/run/netns/{names[2]}").exists()
    with pytest.raises(NetnsError, match="does not exist"):
        netns.write_sysctls(names[2], {"net/ipv4/ip_forward": "1"})
