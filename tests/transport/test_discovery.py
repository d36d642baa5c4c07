"""Bootstrap list, peer cache and composite discovery: no sockets, injected resolver and clock."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentnode.transport.base import Address
from agentnode.transport.discovery import (
    PEER_CACHE_FILENAME,
    CompositeDiscovery,
    Discovery,
    DiscoveryError,
    DiscoveryStats,
    PeerCache,
    StaticDiscovery,
    discovery_for,
    parse_bootstrap,
)

TIMEOUT_S = 5.0


class Found:
    """Records deliveries; `wait(n)` waits for the n-th."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Address], str]] = []
        self._event = asyncio.Event()

    def __call__(self, addresses: list[Address], source: str) -> None:
        self.calls.append((addresses, source))
        self._event.set()

    async def wait(self, count: int) -> None:
        async def loop() -> None:
            while len(self.calls) < count:
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(loop(), TIMEOUT_S)


# -- parsing ------------------------------------------------------------------------------------------


def test_parse_bootstrap_list() -> None:
    assert parse_bootstrap("10.0.0.5:7946, seed.lan:7000,[::1]:9") == [
        Address("10.0.0.5", 7946),
        Address("seed.lan", 7000),
        Address("::1", 9),
    ]
    assert parse_bootstrap("a:1,a:1,b:2") == [Address("a", 1), Address("b", 2)]
    assert parse_bootstrap(["a:1", Address("b", 2)]) == [Address("a", 1), Address("b", 2)]
    assert parse_bootstrap("seed", default_port=7946) == [Address("seed", 7946)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty bootstrap list"),
        ("   ", "empty bootstrap list"),
        ("a:1,,b:2", "entry 2 is empty"),
        ("a:1,", "entry 2 is empty"),
        ("seed", "entry 1: address 'seed' has no port"),
        ("a:1,b:http", "entry 2: address 'b:http': port 'http' is not a number"),
        ("a:70000", "outside 0..65535"),
        ("a:0", "port 0 cannot be dialled"),
        ("[::1:80", "missing ']'"),
        (":80", "has no host"),
    ],
)
def test_parse_bootstrap_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="bootstrap|address|port") as info:
        parse_bootstrap(text)
    assert message in str(info.value)


def test_parse_bootstrap_bounds_the_list() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        parse_bootstrap(",".join(f"10.0.0.{i}:1" for i in range(65)))


def test_static_discovery_rejects_bad_config_at_construction() -> None:
    with pytest.raises(ValueError, match="entry 1"):
        StaticDiscovery("nope")
    with pytest.raises(ValueError, match="refresh_interval_s"):
        StaticDiscovery("a:1", refresh_interval_s=0)


# -- static discovery ---------------------------------------------------------------------------------


async def test_static_discovery_resolves_names_and_redelivers() -> None:
    answers = {"seed.lan": [["10.0.0.1"], ["10.0.0.2", "10.0.0.3"]]}
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        ips = answers[host]
        return ips.pop(0) if len(ips) > 1 else ips[0]

    found = Found()
    d = StaticDiscovery("seed.lan:7946,192.0.2.9:7000", refresh_interval_s=0.05, resolver=resolver)
    assert isinstance(d, Discovery)
    d.set_handler(found)
    await d.start()
    assert found.calls[0] == ([Address("10.0.0.1", 7946), Address("192.0.2.9", 7000)], "bootstrap")
    await found.wait(3)
    await d.close()
    # the name was looked up again at each refresh, and the new answer was used
    assert lookups.count("seed.lan") >= 3
    assert found.calls[1][0] == [Address("10.0.0.2", 7946), Address("10.0.0.3", 7946), Address("192.0.2.9", 7000)]
    stats = d.stats()
    assert stats.deliveries == len(found.calls) and stats.peers_known == 3 and stats.errors == 0
    settled = len(found.calls)
    await asyncio.sleep(0.15)
    assert len(found.calls) == settled, "close() stops the refresh loop"


async def test_static_discovery_keeps_last_good_resolution(caplog: pytest.LogCaptureFixture) -> None:
    fail = False

    async def resolver(host: str, port: int) -> list[str]:
        if fail:
            raise OSError(-2, "Name or service not known")
        return ["10.1.1.1"]

    found = Found()
    d = StaticDiscovery(["seed.lan:1", "dead.lan:2"], refresh_interval_s=60, resolver=resolver)
    d.set_handler(found)
    await d.start()
    assert found.calls[-1][0] == [Address("10.1.1.1", 1), Address("10.1.1.1", 2)]
    fail = True
    assert await d.refresh() == [Address("10.1.1.1", 1), Address("10.1.1.1", 2)]
    await d.close()
    stats = d.stats()
    assert stats.errors == 2 and "cannot resolve bootstrap host" in stats.last_error
    assert "last good lookup" in stats.last_error
    assert "Name or service not known" in caplog.text


async def test_static_discovery_survives_a_hanging_resolver_and_a_failing_handler() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return []

    def bad_handler(addresses: list[Address], source: str) -> None:
        raise RuntimeError("bug in the node")

    d = StaticDiscovery("slow.lan:1,10.0.0.1:2", resolver=resolver, resolve_timeout_s=0.05)
    d.set_handler(bad_handler)
    await d.start()  # neither the timeout nor the handler's exception escapes
    await d.close()
    assert d.stats().errors == 1 and "timed out" in d.stats().last_error
    assert d.stats().deliveries == 1


async def test_static_discovery_real_resolver_on_localhost() -> None:
    found = Found()
    d = StaticDiscovery("localhost:7946")
    d.set_handler(found)
    await d.start()
    await d.close()
    assert found.calls and all(a.port == 7946 for a in found.calls[0][0])
    assert any(a.host in ("127.0.0.1", "::1") for a in found.calls[0][0])


# -- peer cache -----------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms


def test_peer_cache_survives_restart(tmp_path: Path) -> None:
    clock = Clock()
    cache = PeerCache.in_data_dir(tmp_path, wall_clock_ms=clock)
    assert cache.path == tmp_path / PEER_CACHE_FILENAME
    assert cache.load() == []
    members = [SimpleNamespace(node_id="aaa", address="10.0.0.1:7946"), SimpleNamespace(node_id="bbb", address=Address("10.0.0.2", 7946))]
    assert cache.update(members)
    clock.now_ms += 1000
    assert cache.update({"ccc": Address("10.0.0.3", 1)})
    # a new process: a fresh object on the same file
    again = PeerCache(tmp_path / PEER_CACHE_FILENAME, wall_clock_ms=clock)
    assert again.load() == [Address("10.0.0.3", 1), Address("10.0.0.1", 7946), Address("10.0.0.2", 7946)]
    assert [p.node_id for p in again.peers()] == ["ccc", "aaa", "bbb"]
    assert again.peers()[0].last_seen_ms == clock.now_ms
    # a peer that moved keeps one entry with the new address
    again.update({"aaa": "10.9.9.9:7946"})
    assert Address("10.0.0.1", 7946) not in PeerCache(again.path, wall_clock_ms=clock).load()
    assert not list(tmp_path.glob(".*.tmp")), "no temp file left behind"


def test_peer_cache_is_bounded_and_ages_out(tmp_path: Path) -> None:
    clock = Clock()
    cache = PeerCache(tmp_path / "p.json", max_peers=3, max_age_s=60, wall_clock_ms=clock)
    for i in range(5):
        clock.now_ms += 1
        cache.update({f"n{i}": Address("10.0.0.1", 1000 + i)})
    assert [p.node_id for p in cache.peers()] == ["n4", "n3", "n2"]
    assert len(json.loads((tmp_path / "p.json").read_text())["peers"]) == 3
    clock.now_ms += 61_000
    assert PeerCache(tmp_path / "p.json", wall_clock_ms=clock, max_age_s=60).load() == []


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'{"version": 99, "peers": []}',
        b'{"version": 1, "peers": "nope"}',
        b"",
    ],
)
def test_peer_cache_corrupt_file_is_ignored_then_replaced(tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "peers.json"
    path.write_bytes(content)
    cache = PeerCache(path)
    assert cache.load() == []
    assert cache.stats().errors == 1 and str(path) in cache.stats().last_error
    assert "ignoring it" in caplog.text
    assert cache.update({"aaa": Address("10.0.0.1", 1)})
    assert PeerCache(path).load() == [Address("10.0.0.1", 1)]


def test_peer_cache_skips_malformed_entries(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    good = {"node_id": "aaa", "host": "10.0.0.1", "port": 1, "last_seen_ms": 2**40}
    bad = [
        {"node_id": "", "host": "h", "port": 1, "last_seen_ms": 1},
        {"node_id": "x", "host": "h", "port": 0, "last_seen_ms": 1},
        {"node_id": "x", "host": "h", "port": True, "last_seen_ms": 1},
        {"node_id": "x", "host": 5, "port": 1, "last_seen_ms": 1},
        {"node_id": "x\n", "host": "h", "port": 1, "last_seen_ms": 1},
        "string",
    ]
    path.write_text(json.dumps({"version": 1, "peers": [good, *bad]}))
    cache = PeerCache(path, max_age_s=10**9, wall_clock_ms=lambda: 2**40)
    assert cache.load() == [Address("10.0.0.1", 1)]
    assert cache.entries_rejected == len(bad)


def test_peer_cache_huge_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    path.write_bytes(b" " * (2 << 20))
    cache = PeerCache(path)
    assert cache.load() == [] and "limit" in cache.stats().last_error


def test_peer_cache_write_failure_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = PeerCache(blocker / "sub" / "peers.json")  # parent is a file: mkdir fails
    assert cache.update({"aaa": Address("10.0.0.1", 1)}) is False
    # the read at first use failed too (not a directory): both are counted, neither raised
    assert cache.stats().errors == 2 and "cannot write" in cache.stats().last_error
    assert cache.peers()[0].node_id == "aaa", "kept in memory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_peer_cache_read_only_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        assert PeerCache(tmp_path / "peers.json").update({"a": Address("h", 1)}) is False
    finally:
        tmp_path.chmod(0o700)


def test_peer_cache_write_is_atomic_rename(tmp_path: Path) -> None:
    """The old file stays whole until the new one replaces it: its inode changes on each write."""
    path = tmp_path / "peers.json"
    cache = PeerCache(path)
    cache.update({"a": Address("h", 1)})
    first = path.stat().st_ino
    cache.update({"b": Address("h", 2)})
    assert path.stat().st_ino != first
    assert json.loads(path.read_text())["version"] == 1


async def test_peer_cache_as_discovery_delivers_once(tmp_path: Path) -> None:
    PeerCache(tmp_path / "p.json").update({"a": Address("10.0.0.1", 1)})
    found = Found()
    cache = PeerCache(tmp_path / "p.json")
    cache.set_handler(found)
    await cache.start()
    await cache.close()
    assert found.calls == [([Address("10.0.0.1", 1)], "cache")]


# -- composite -------------------------------------------------------------------------------------------


class FakeSource:
    def __init__(self, name: str, addresses: list[Address], fail: str = "") -> None:
        self.source = name
        self.addresses = addresses
        self.fail = fail
        self.closed = False
        self.handler = None

    def set_handler(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.handler = handler

    async def start(self) -> None:
        if self.fail:
            raise DiscoveryError(self.fail)
        self.handler(self.addresses, self.source)

    def stats(self) -> DiscoveryStats:
        return DiscoveryStats(self.source, deliveries=1, peers_known=len(self.addresses))

    async def close(self) -> None:
        self.closed = True


async def test_composite_tags_each_source_and_survives_one_failure(caplog: pytest.LogCaptureFixture) -> None:
    a, b, broken = FakeSource("bootstrap", [Address("h", 1)]), FakeSource("cache", [Address("h", 2)]), FakeSource("mdns", [], fail="multicast blocked")
    found = Found()
    composite = CompositeDiscovery([a, broken, b])
    composite.set_handler(found)
    await composite.start()
    assert found.calls == [([Address("h", 1)], "bootstrap"), ([Address("h", 2)], "cache")]
    assert composite.failures == {"mdns": "multicast blocked"}
    assert "mdns failed to start: multicast blocked" in caplog.text
    by_source = composite.stats_by_source()
    assert set(by_source) == {"bootstrap", "cache", "mdns"}
    assert composite.stats().peers_known == 2 and composite.stats().errors == 1
    await composite.close()
    assert a.closed and b.closed and not broken.closed


async def test_composite_raises_when_every_source_fails() -> None:
    composite = CompositeDiscovery([FakeSource("mdns", [], fail="no multicast"), FakeSource("bootstrap", [], fail="bad")])
    with pytest.raises(DiscoveryError, match="no discovery source could start.*mdns: no multicast"):
        await composite.start()


def test_composite_rejects_duplicate_tags() -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        CompositeDiscovery([FakeSource("bootstrap", []), FakeSource("bootstrap", [])])


def test_discovery_for_configuration() -> None:
    none = SimpleNamespace(bootstrap=(), mdns=False, cluster="c")
    assert discovery_for(none, "n1", Address("127.0.0.1", 1)) is None
    static = discovery_for(SimpleNamespace(bootstrap=(Address("10.0.0.1", 7946),), mdns=False, cluster="c"), "n1", Address("127.0.0.1", 1))
    assert isinstance(static, StaticDiscovery) and static.addresses == (Address("10.0.0.1", 7946),)
    both = discovery_for(SimpleNamespace(bootstrap=(Address("10.0.0.1", 7946),), mdns=True, cluster="c"), "n1", Address("127.0.0.1", 1))
    assert isinstance(both, CompositeDiscovery) and both.source == "bootstrap+mdns"


# -- garbage in, never a crash --------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
_entry = st.fixed_dictionaries(
    {"node_id": st.one_of(st.text(max_size=140), st.integers()), "host": st.one_of(st.text(max_size=20), st.none()),
     "port": st.one_of(st.integers(-5, 70000), st.booleans(), st.text(max_size=3)), "last_seen_ms": st.one_of(st.integers(-5, 2**45), st.floats())}
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(_json, st.fixed_dictionaries({"version": st.just(1), "peers": st.lists(_entry | _json, max_size=8)})), raw=st.binary(max_size=64))
def test_peer_cache_never_crashes_on_garbage(tmp_path: Path, document: object, raw: bytes) -> None:
    for content in (json.dumps(document).encode(), raw):
        path = tmp_path / "peers.json"
        path.write_bytes(content)
        cache = PeerCache(path, max_age_s=10**12)
        addresses = cache.load()
        assert all(isinstance(a, Address) and 0 < a.port <= 65535 for a in addresses)
        assert len(addresses) <= cache.max_peers
