"""mDNS discovery on 127.0.0.1 with python-zeroconf.

The loopback is shared with every other process on this machine, so each test uses cluster
names and node ids unique to the run and asserts only about its own records.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from agentnode.transport.base import Address
from agentnode.transport.diagnosis import judge_mdns, probe_mdns
from agentnode.transport.discovery import Discovery
from agentnode.transport.mdns import SERVICE_TYPE, MdnsDiscovery, MdnsError, MdnsStats

pytestmark = pytest.mark.loopback

LOOPBACK = ["127.0.0.1"]
WAIT_S = 10.0


def run_id() -> str:
    return uuid.uuid4().hex[:10]


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


class Node:
    def __init__(self, cluster: str, node_id: str, port: int, **options: object) -> None:
        self.found: list[tuple[list[Address], str]] = []
        self.mdns = MdnsDiscovery(cluster, node_id, Address("127.0.0.1", port), interfaces=LOOPBACK, **options)  # type: ignore[arg-type]
        self.mdns.set_handler(lambda addresses, source: self.found.append((addresses, source)))

    def addresses(self) -> set[Address]:
        return {a for addresses, _ in self.found for a in addresses}


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    yield started
    await asyncio.gather(*(n.mdns.close() for n in started))


async def start(nodes: list[Node], *new: Node) -> None:
    nodes.extend(new)
    await asyncio.wait_for(asyncio.gather(*(n.mdns.start() for n in new)), WAIT_S)


async def test_two_nodes_of_one_cluster_find_each_other_and_ignore_another_cluster(nodes: list[Node]) -> None:
    run = run_id()
    a = Node(f"blue-{run}", f"a{run}", 7001)
    b = Node(f"blue-{run}", f"b{run}", 7002)
    stranger = Node(f"red-{run}", f"x{run}", 7003)
    assert isinstance(a.mdns, Discovery)
    await start(nodes, a, b, stranger)
    await until(lambda: Address("127.0.0.1", 7002) in a.addresses() and Address("127.0.0.1", 7001) in b.addresses())
    await until(lambda: f"x{run}" in dict(a.mdns.mdns_stats().other_clusters).get(f"red-{run}", ()))
    assert all(source == "mdns" for _, source in a.found + b.found)
    # the other cluster's node is counted, never delivered; nobody is told about itself
    for node in (a, b):
        assert Address("127.0.0.1", 7003) not in node.addresses()
        stats = node.mdns.mdns_stats()
        assert stats.own_record_seen and stats.announced and stats.running
        assert stats.peers_known >= 1 and stats.peers_found >= 1 and stats.answers_seen >= 2
    assert Address("127.0.0.1", 7001) not in a.addresses()
    assert [p.node_id for p in a.mdns.peers() if run in p.node_id] == [f"b{run}"]
    assert stranger.addresses().isdisjoint({Address("127.0.0.1", 7001), Address("127.0.0.1", 7002)})
    others = dict(stranger.mdns.mdns_stats().other_clusters)
    assert set(others[f"blue-{run}"]) >= {f"a{run}", f"b{run}"}
    assert a.mdns.stats().source == "mdns" and a.mdns.stats().deliveries >= 1


async def test_goodbye_on_close_removes_the_peer(nodes: list[Node]) -> None:
    run = run_id()
    a, b = Node(f"c-{run}", f"a{run}", 7011), Node(f"c-{run}", f"b{run}", 7012)
    await start(nodes, a, b)
    await until(lambda: any(p.node_id == f"b{run}" for p in a.mdns.peers()))
    await b.mdns.close()
    # RFC 6762 §10.1: a goodbye (TTL 0) makes caches drop the record after one second
    await until(lambda: not any(p.node_id == f"b{run}" for p in a.mdns.peers()))
    await b.mdns.close()  # twice is fine


async def test_known_peers_are_redelivered_at_each_refresh(nodes: list[Node]) -> None:
    run = run_id()
    a = Node(f"c-{run}", f"a{run}", 7021, refresh_interval_s=0.2)
    b = Node(f"c-{run}", f"b{run}", 7022)
    await start(nodes, a, b)
    await until(lambda: sum(Address("127.0.0.1", 7022) in addrs for addrs, _ in a.found) >= 3)


async def test_duplicate_node_id_is_refused_clearly(nodes: list[Node]) -> None:
    run = run_id()
    await start(nodes, Node(f"c-{run}", f"dup{run}", 7031))
    twin = Node(f"c-{run}", f"dup{run}", 7032)
    with pytest.raises(MdnsError, match=f"already announces node id dup{run}.*own data directory"):
        await asyncio.wait_for(twin.mdns.start(), WAIT_S)
    assert not twin.mdns.mdns_stats().running


async def test_malformed_announcement_is_counted_not_delivered(nodes: list[Node]) -> None:
    run = run_id()
    a = Node(f"c-{run}", f"a{run}", 7041)
    await start(nodes, a)
    zc = AsyncZeroconf(interfaces=LOOPBACK)
    info = AsyncServiceInfo(
        SERVICE_TYPE, f"junk{run}.{SERVICE_TYPE}", addresses=[bytes([127, 0, 0, 1])], port=7042,
        properties={"cluster": f"c-{run}"},  # no node id, no version
        server=f"junk{run}.local.",
    )
    try:
        await zc.async_register_service(info)
        await until(lambda: a.mdns.mdns_stats().malformed >= 1)
    finally:
        await zc.async_close()
    assert Address("127.0.0.1", 7042) not in a.addresses()


async def test_start_fails_loudly_on_an_interface_that_is_not_here() -> None:
    d = MdnsDiscovery("c", "n1", Address("198.51.100.77", 7000))  # TEST-NET-2 (RFC 5737): derived interface
    with pytest.raises(MdnsError, match="198.51.100.77") as info:
        await asyncio.wait_for(d.start(), WAIT_S)
    assert "--bootstrap" in str(info.value)
    await d.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("", "n1", Address("127.0.0.1", 1)), {}, "cluster name"),
        (("c", "bad id!", Address("127.0.0.1", 1)), {}, "node id"),
        (("c", "x" * 64, Address("127.0.0.1", 1)), {}, "node id"),
        (("c", "n1", Address("127.0.0.1", 0)), {}, "port"),
        (("c", "n1", Address("127.0.0.1", 1)), {"interfaces": ["eth0"]}, "not an IP address"),
        (("c", "n1", Address("127.0.0.1", 1)), {"service_type": "_agentnode._tcp.example."}, "service type"),
        (("c", "n1", Address("127.0.0.1", 1)), {"refresh_interval_s": 0}, "must be > 0"),
    ],
)
def test_constructor_validates_without_io(args: tuple, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        MdnsDiscovery(*args, **kwargs)


async def test_probe_finds_peers_and_reports_other_clusters(nodes: list[Node]) -> None:
    run = run_id()
    await start(nodes, Node(f"c-{run}", f"a{run}", 7051), Node(f"d-{run}", f"z{run}", 7052))
    found = await probe_mdns(f"c-{run}", interfaces=LOOPBACK, duration_s=1.5)
    assert found.ok and found.kind == "ok", found
    assert f"cluster c-{run}" in found.detail and f"d-{run}" in found.detail
    lonely = await probe_mdns(f"e-{run}", interfaces=LOOPBACK, duration_s=1.5)
    assert lonely.kind == "other_clusters_only", lonely
    assert f"c-{run}" in lonely.problem and "--cluster" in lonely.fix


def _stats(**overrides: object) -> MdnsStats:
    base: dict[str, object] = dict(
        cluster="c", interfaces=("127.0.0.1",), advertised=(), running=True, announced=True, own_record_seen=True,
        queries_sent=1, answers_seen=1, peers_found=0, peers_known=0, other_clusters=(), malformed=0,
        resolve_failures=0, dropped=0, errors=0, last_error="",
    )
    base.update(overrides)
    return MdnsStats(**base)  # type: ignore[arg-type]


def test_judge_mdns_tells_blocked_from_empty() -> None:
    blocked = judge_mdns(_stats(own_record_seen=False, answers_seen=0))
    assert blocked.kind == "multicast_blocked" and "UDP 5353" in blocked.problem and "--bootstrap" in blocked.fix
    empty = judge_mdns(_stats())
    assert empty.kind == "no_answers" and "heard our own" in empty.problem
    others = judge_mdns(_stats(other_clusters=(("prod", ("n1", "n2")),)))
    assert others.kind == "other_clusters_only" and "cluster prod: 2 node(s) (n1, n2)" in others.problem
    ok = judge_mdns(_stats(peers_known=3, other_clusters=(("prod", ("n1",)),)))
    assert ok.ok and "found 3 peer(s)" in ok.detail and "prod" in ok.detail
    assert _stats(other_clusters=(("a", ("1", "2")), ("b", ("3",)))).other_cluster_nodes == 3


NETNS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, logging
    from agentnode.transport.base import Address
    from agentnode.transport.mdns import MdnsDiscovery
    from agentnode.transport.diagnosis import probe_mdns

    async def main():
        d = MdnsDiscovery("c", "n1", Address("127.0.0.1", 7000), self_check_s=1.0, refresh_interval_s=30)
        await d.start()
        await asyncio.sleep(2.0)
        stats = d.mdns_stats()
        await d.close()
        probe = await probe_mdns("c", interfaces=["127.0.0.1"], duration_s=1.5)
        print(json.dumps({"own": stats.own_record_seen, "errors": stats.errors, "last_error": stats.last_error,
                          "kind": probe.kind}))

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
    """
)


@pytest.mark.netns
def test_blocked_multicast_is_reported_not_silent() -> None:
    """In a private network namespace, drop UDP 5353 with nft: the node warns and the doctor says 'blocked'."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("netns: needs root, unshare, ip and nft (apt-get install nftables)")
    firewall = (
        "ip link set dev lo up && nft add table inet blk && "
        "nft add chain inet blk in '{ type filter hook input priority 0; }' && "
        "nft add rule inet blk in udp dport 5353 drop && "
    )
    command = ["unshare", "--net", "sh", "-c", firewall + f'exec "{sys.executable}" -c "$0"', NETNS_SCRIPT]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip(f"netns: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["own"] is False
    assert result["errors"] == 1 and "looks blocked" in result["last_error"]
    assert "looks blocked" in done.stderr, "logged at ERROR, not only counted"
    assert result["kind"] == "multicast_blocked"
