"""How a node learns the addresses of other nodes: a bootstrap list, mDNS, and a persisted peer cache.

Every source implements the `Discovery` protocol and reports through one callback,
`handler(addresses, source)`, called on the event loop. Sources only *suggest* addresses: the
node dials them, and the transport's mutual TLS decides who is really a cluster member. So a
stale or wrong suggestion costs one failed dial, never a wrong member.

Sources re-deliver what they know periodically, because the membership layer forgets peers it
declared dead: after a partition heals, a fresh suggestion is what lets the two sides re-merge
(docs/discovery.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agentnode.transport.base import Address, TransportError

__all__ = [
    "BOOTSTRAP_REFRESH_INTERVAL_S",
    "CachedPeer",
    "CompositeDiscovery",
    "Discovery",
    "DiscoveryError",
    "DiscoverySettings",
    "DiscoveryStats",
    "FoundHandler",
    "PEER_CACHE_FILENAME",
    "PeerCache",
    "Resolver",
    "StaticDiscovery",
    "discovery_for",
    "parse_bootstrap",
]

log = logging.getLogger("agentnode.discovery")

BOOTSTRAP_REFRESH_INTERVAL_S = 30.0
"""Re-resolve and re-deliver the bootstrap list this often (Consul `retry_interval` and Serf retry-join default: 30 s)."""
MAX_BOOTSTRAP_ADDRESSES = 64
"""A bootstrap list longer than this is a configuration mistake (seeds are a handful of nodes)."""
MAX_ADDRESSES_PER_HOST = 8
"""A host name resolving to more addresses than this contributes only the first ones."""
RESOLVE_TIMEOUT_S = 5.0
"""One DNS lookup may take this long before the entry is skipped for this round."""
PEER_CACHE_FILENAME = "peers.json"
"""The peer cache's file name inside the node's data directory."""
PEER_CACHE_MAX_PEERS = 128
"""Peers remembered; the most recently seen win. Enough to re-seed, small enough to read at every start."""
PEER_CACHE_MAX_AGE_S = 7 * 24 * 3600.0
"""Peers not seen for a week are forgotten: their addresses have probably been reused."""
PEER_CACHE_MAX_FILE_BYTES = 1 << 20
"""A cache file larger than this is not ours (or is corrupt) and is ignored unread."""
PEER_CACHE_VERSION = 1
MAX_NODE_ID_LENGTH = 128
"""Node ids longer than this in the cache file are treated as garbage."""


class DiscoveryError(TransportError):
    """A discovery source cannot run at all (for mDNS: no socket could join the multicast group)."""


FoundHandler = Callable[[list[Address], str], None]
"""`handler(addresses, source)`: addresses worth dialling, and which source found them."""

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`await resolver(host, port)` returns IP literals for `host`; raises `OSError` when it cannot."""


@dataclass(frozen=True, slots=True)
class DiscoveryStats:
    """Counters one discovery source keeps; exported as metrics and shown by `agentnode doctor`."""

    source: str
    """Which source: `bootstrap`, `mdns`, `cache`, or `+`-joined for a composite."""
    deliveries: int = 0
    """Times the handler was called."""
    addresses_delivered: int = 0
    """Addresses passed to the handler, summed over deliveries."""
    peers_known: int = 0
    """Distinct addresses this source currently knows."""
    errors: int = 0
    """Failures (a lookup, a file, a socket); each is also logged with its cause."""
    last_error: str = ""
    """The most recent failure, in words, or empty."""


@runtime_checkable
class Discovery(Protocol):
    """A source of peer addresses.

    Life cycle: construct (no I/O), `set_handler`, `await start()`, `await close()`.
    The handler runs on the event loop; it may be called from `start()` already.
    """

    @property
    def source(self) -> str:
        """The tag passed to the handler with each delivery."""
        ...

    def set_handler(self, handler: FoundHandler) -> None:
        """Install the callback for found addresses. Call before `start()`."""
        ...

    async def start(self) -> None:
        """Begin discovering. Raises `DiscoveryError` with the cause if the source cannot work at all."""
        ...

    def stats(self) -> DiscoveryStats:
        """A snapshot of the counters."""
        ...

    async def close(self) -> None:
        """Stop discovering and withdraw anything announced. Safe to call twice or before `start()`."""
        ...


class _Source:
    """Shared bookkeeping: the handler, counters, and a guarded delivery."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._handler: FoundHandler | None = None
        self._deliveries = 0
        self._addresses_delivered = 0
        self._errors = 0
        self._last_error = ""

    @property
    def source(self) -> str:
        return self._source

    def set_handler(self, handler: FoundHandler) -> None:
        self._handler = handler

    def _deliver(self, addresses: list[Address]) -> None:
        if not addresses or self._handler is None:
            return
        self._deliveries += 1
        self._addresses_delivered += len(addresses)
        try:
            self._handler(list(addresses), self._source)
        except Exception:  # a bug in the node's handler must not stop discovery
            log.exception("discovery handler failed on %d address(es) from %s", len(addresses), self._source)

    def _error(self, message: str, *, level: int = logging.WARNING) -> None:
        self._errors += 1
        self._last_error = message
        log.log(level, "%s discovery: %s", self._source, message)

    def _stats(self, peers_known: int) -> DiscoveryStats:
        return DiscoveryStats(
            source=self._source,
            deliveries=self._deliveries,
            addresses_delivered=self._addresses_delivered,
            peers_known=peers_known,
            errors=self._errors,
            last_error=self._last_error,
        )


# -- bootstrap list ---------------------------------------------------------------------------------


def parse_bootstrap(text: str | Sequence[str | Address], default_port: int | None = None) -> list[Address]:
    """Parse `HOST:PORT[,HOST:PORT...]` (or a list of such entries); raise `ValueError` naming the bad entry.

    Duplicates are dropped, order is kept. Without `default_port` every entry needs a port.
    """
    items: list[str | Address]
    if isinstance(text, str):
        if not text.strip():
            raise ValueError("empty bootstrap list; expected HOST:PORT[,HOST:PORT...], for example 10.0.0.5:7946")
        items = list(text.split(","))
    else:
        items = list(text)
    addresses: list[Address] = []
    for position, item in enumerate(items, start=1):
        if isinstance(item, Address):
            address = item
        else:
            if not item.strip():
                raise ValueError(
                    f"bootstrap entry {position} is empty (two commas in a row, or a trailing comma?); "
                    "expected HOST:PORT[,HOST:PORT...]"
                )
            try:
                address = Address.parse(item, default_port=default_port)
            except ValueError as exc:
                raise ValueError(f"bootstrap entry {position}: {exc}") from None
        if address.port == 0:
            raise ValueError(f"bootstrap entry {position} ({address}): port 0 cannot be dialled; give the seed's real port")
        if address not in addresses:
            addresses.append(address)
    if len(addresses) > MAX_BOOTSTRAP_ADDRESSES:
        raise ValueError(
            f"{len(addresses)} bootstrap addresses; at most {MAX_BOOTSTRAP_ADDRESSES} are allowed "
            "(a few seeds suffice: membership gossip finds the rest)"
        )
    return addresses


async def resolve_host(host: str, port: int) -> list[str]:
    """The default `Resolver`: the system's `getaddrinfo`, TCP addresses, order kept, duplicates dropped."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = str(sockaddr[0])
        if ip not in found:
            found.append(ip)
    return found


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class StaticDiscovery(_Source):
    """The `--bootstrap` list: host names are resolved at start and again at every refresh.

    Every refresh re-delivers the whole list, so a node whose membership lost everyone (a
    partition, a restart of all seeds) dials the seeds again without an operator.
    """

    def __init__(
        self,
        addresses: str | Sequence[str | Address],
        *,
        refresh_interval_s: float = BOOTSTRAP_REFRESH_INTERVAL_S,
        default_port: int | None = None,
        resolver: Resolver | None = None,
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
    ) -> None:
        super().__init__("bootstrap")
        if refresh_interval_s <= 0:
            raise ValueError(f"refresh_interval_s must be > 0, got {refresh_interval_s}")
        self.addresses: tuple[Address, ...] = tuple(parse_bootstrap(addresses, default_port))
        self.refresh_interval_s = refresh_interval_s
        self._resolver: Resolver = resolver or resolve_host
        self._resolve_timeout_s = resolve_timeout_s
        self._resolved: dict[Address, list[Address]] = {}
        """Last good resolution per configured entry; kept when a later lookup fails (DNS blips)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Resolve and deliver once, then keep refreshing in the background. Lookup failures are logged, not raised."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop(), name="agentnode-bootstrap-refresh")

    async def refresh(self) -> list[Address]:
        """Resolve every entry now and deliver the result; returns what was delivered."""
        found: list[Address] = []
        for entry in self.addresses:
            for address in await self._resolve(entry):
                if address not in found:
                    found.append(address)
        self._deliver(found)
        return found

    def stats(self) -> DiscoveryStats:
        known = {a for resolved in self._resolved.values() for a in resolved}
        return self._stats(len(known))

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            await self.refresh()

    async def _resolve(self, entry: Address) -> list[Address]:
        if _is_ip_literal(entry.host):
            self._resolved[entry] = [entry]
            return [entry]
        try:
            ips = await asyncio.wait_for(self._resolver(entry.host, entry.port), self._resolve_timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            cause = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            kept = self._resolved.get(entry, [])
            tail = f"; using the {len(kept)} address(es) from the last good lookup" if kept else ""
            self._error(f"cannot resolve bootstrap host {entry.host!r}: {cause}{tail}")
            return kept
        resolved = [Address(ip, entry.port) for ip in ips[:MAX_ADDRESSES_PER_HOST]]
        if not resolved:
            self._error(f"bootstrap host {entry.host!r} resolved to no address")
            return self._resolved.get(entry, [])
        self._resolved[entry] = resolved
        return resolved


# -- peer cache -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class CachedPeer:
    """One remembered peer."""

    node_id: str
    address: Address
    last_seen_ms: int
    """Wall-clock time (ms since the epoch) when this node last saw the peer alive."""


class PeerCache(_Source):
    """Recently seen peers in a small JSON file in the data directory, so a restart re-seeds without a bootstrap list.

    Writes are atomic (temp file, fsync, rename, fsync of the directory): a crash leaves the old
    file or the new one, never half of one. A corrupt or foreign file is logged and ignored; it
    is replaced at the next `update`. I/O errors (full disk, read-only) are logged and counted,
    never raised: losing the cache only slows the next start.

    As a `Discovery`, `start()` delivers the cached addresses once (source `cache`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_peers: int = PEER_CACHE_MAX_PEERS,
        max_age_s: float = PEER_CACHE_MAX_AGE_S,
        wall_clock_ms: Callable[[], int] | None = None,
    ) -> None:
        super().__init__("cache")
        if max_peers < 1:
            raise ValueError(f"max_peers must be >= 1, got {max_peers}")
        self.path = Path(path)
        self.max_peers = max_peers
        self.max_age_ms = int(max_age_s * 1000)
        self._wall_clock_ms = wall_clock_ms or (lambda: int(time.time() * 1000))
        self._peers: dict[str, CachedPeer] = {}
        self._loaded = False
        self.writes = 0
        """Successful atomic writes."""
        self.entries_rejected = 0
        """Entries of the file that were malformed and skipped."""

    @classmethod
    def in_data_dir(cls, data_dir: str | os.PathLike[str], **options: Any) -> PeerCache:
        """The cache at its conventional place, `<data_dir>/peers.json`."""
        return cls(Path(data_dir) / PEER_CACHE_FILENAME, **options)

    def load(self) -> list[Address]:
        """Read the file; return the remembered addresses, most recently seen first. Never raises for file problems."""
        self._peers = {}
        self._loaded = True
        now_ms = self._wall_clock_ms()
        for peer in self._read_file():
            if now_ms - peer.last_seen_ms > self.max_age_ms:
                continue
            current = self._peers.get(peer.node_id)
            if current is None or peer.last_seen_ms > current.last_seen_ms:
                self._peers[peer.node_id] = peer
        self._trim()
        return [p.address for p in self.peers()]

    def peers(self) -> list[CachedPeer]:
        """The remembered peers, most recently seen first (ties by node id)."""
        return sorted(self._peers.values(), key=lambda p: (-p.last_seen_ms, p.node_id))

    def update(self, members: Iterable[Any] | Mapping[str, Address | str], now_ms: int | None = None) -> bool:
        """Mark `members` as seen now, merge them into the cache and write it; True if the write succeeded.

        `members` is a mapping node id -> address, or objects with `node_id` and `address`
        attributes (membership records); addresses may be `Address` or `HOST:PORT` text.
        Peers not in `members` keep their old last-seen time until they age out.
        """
        if not self._loaded:
            self.load()
        now_ms = self._wall_clock_ms() if now_ms is None else now_ms
        pairs = members.items() if isinstance(members, Mapping) else ((m.node_id, m.address) for m in members)
        for node_id, address in pairs:
            if isinstance(address, str):
                try:
                    address = Address.parse(address)
                except ValueError:
                    log.warning("peer cache: member %s has an unusable address %r; not cached", node_id, address)
                    continue
            self._peers[str(node_id)] = CachedPeer(str(node_id), address, now_ms)
        self._peers = {k: v for k, v in self._peers.items() if now_ms - v.last_seen_ms <= self.max_age_ms}
        self._trim()
        return self._write()

    async def start(self) -> None:
        """Deliver the cached addresses once."""
        self._deliver(self.load() if not self._loaded else [p.address for p in self.peers()])

    def stats(self) -> DiscoveryStats:
        return self._stats(len(self._peers))

    async def close(self) -> None:
        return None

    def _trim(self) -> None:
        if len(self._peers) > self.max_peers:
            keep = self.peers()[: self.max_peers]
            self._peers = {p.node_id: p for p in keep}

    def _read_file(self) -> list[CachedPeer]:
        try:
            size = self.path.stat().st_size
            if size > PEER_CACHE_MAX_FILE_BYTES:
                self._error(f"{self.path} is {size} bytes, over the {PEER_CACHE_MAX_FILE_BYTES}-byte limit; ignoring it")
                return []
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._error(f"cannot read {self.path}: {exc}; starting without cached peers")
            return []
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            self._error(f"{self.path} is corrupt ({exc}); ignoring it, it is rewritten at the next update")
            return []
        if not isinstance(document, dict) or document.get("version") != PEER_CACHE_VERSION or not isinstance(document.get("peers"), list):
            self._error(f"{self.path} is not a version-{PEER_CACHE_VERSION} peer cache; ignoring it, it is rewritten at the next update")
            return []
        peers = []
        rejected = 0
        for entry in document["peers"][: self.max_peers * 4]:
            peer = _peer_from_json(entry)
            if peer is None:
                rejected += 1
            else:
                peers.append(peer)
        if rejected:
            self.entries_rejected += rejected
            log.warning("peer cache %s: skipped %d malformed entries", self.path, rejected)
        return peers

    def _write(self) -> bool:
        document = {
            "version": PEER_CACHE_VERSION,
            "peers": [
                {"node_id": p.node_id, "host": p.address.host, "port": p.address.port, "last_seen_ms": p.last_seen_ms}
                for p in self.peers()
            ],
        }
        data = json.dumps(document, indent=1, sort_keys=True).encode()
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
            _fsync_directory(self.path.parent)
        except OSError as exc:
            self._error(f"cannot write {self.path}: {exc}; keeping the cache in memory only")
            try:
                temp.unlink()
            except OSError:
                pass
            return False
        self.writes += 1
        return True


def _peer_from_json(entry: object) -> CachedPeer | None:
    if not isinstance(entry, dict):
        return None
    node_id, host, port, seen = entry.get("node_id"), entry.get("host"), entry.get("port"), entry.get("last_seen_ms")
    if not isinstance(node_id, str) or not node_id or len(node_id) > MAX_NODE_ID_LENGTH or not node_id.isprintable():
        return None
    if not isinstance(host, str) or not host or len(host) > 253:
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        return None
    if not isinstance(seen, int) or isinstance(seen, bool) or seen < 0:
        return None
    return CachedPeer(node_id, Address(host, port), seen)


def _fsync_directory(path: Path) -> None:
    """Make a rename durable (POSIX: the directory entry lives in the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- several sources at once ----------------------------------------------------------------------


class CompositeDiscovery:
    """Runs several sources; each delivery keeps its own source tag.

    A source that fails to start is logged at ERROR with its cause and recorded in `failures`;
    the others keep running (a node with a bootstrap list still works when multicast is
    blocked). Only when every source fails does `start()` raise `DiscoveryError`.
    """

    def __init__(self, sources: Sequence[Discovery]) -> None:
        names = [s.source for s in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"two discovery sources share the tag(s) {duplicates}; give each a distinct source")
        self.sources: tuple[Discovery, ...] = tuple(sources)
        self.failures: dict[str, str] = {}
        """Source tag -> why it failed to start."""
        self._started: list[Discovery] = []

    @property
    def source(self) -> str:
        return "+".join(s.source for s in self.sources)

    def set_handler(self, handler: FoundHandler) -> None:
        for source in self.sources:
            source.set_handler(handler)

    async def start(self) -> None:
        self.failures = {}
        for source in self.sources:
            try:
                await source.start()
            except Exception as exc:  # noqa: BLE001 - any source failure is reported, the others still run
                self.failures[source.source] = str(exc) or type(exc).__name__
                log.error("discovery source %s failed to start: %s", source.source, self.failures[source.source])
                continue
            self._started.append(source)
        if self.sources and not self._started:
            causes = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
            raise DiscoveryError(f"no discovery source could start ({causes})")

    def stats(self) -> DiscoveryStats:
        """The sum over sources; `stats_by_source()` has the split."""
        parts = list(self.stats_by_source().values())
        errors = [p.last_error for p in parts if p.last_error]
        return DiscoveryStats(
            source=self.source,
            deliveries=sum(p.deliveries for p in parts),
            addresses_delivered=sum(p.addresses_delivered for p in parts),
            peers_known=sum(p.peers_known for p in parts),
            errors=sum(p.errors for p in parts) + len(self.failures),
            last_error=errors[-1] if errors else next(iter(self.failures.values()), ""),
        )

    def stats_by_source(self) -> dict[str, DiscoveryStats]:
        return {s.source: s.stats() for s in self.sources}

    async def close(self) -> None:
        started, self._started = self._started, []
        for source in reversed(started):
            try:
                await source.close()
            except Exception:  # noqa: BLE001 - closing one source must not leave the others open
                log.exception("closing discovery source %s failed", source.source)


# -- wiring from node configuration ---------------------------------------------------------------


class DiscoverySettings(Protocol):
    """The configuration fields discovery reads (the node's `NodeConfig` has them)."""

    @property
    def bootstrap(self) -> Sequence[Address]: ...

    @property
    def mdns(self) -> bool: ...

    @property
    def cluster(self) -> str: ...


def discovery_for(settings: DiscoverySettings, node_id: str, advertised: Address) -> Discovery | None:
    """The sources a node's configuration asks for (bootstrap list, mDNS), or None for none.

    The peer cache is not included: the node reads it itself at start and writes it as
    membership changes.
    """
    sources: list[Discovery] = []
    if settings.bootstrap:
        sources.append(StaticDiscovery(list(settings.bootstrap)))
    if settings.mdns:
        from agentnode.transport.mdns import MdnsDiscovery

        sources.append(MdnsDiscovery(settings.cluster, node_id, advertised))
    if not sources:
        return None
    return sources[0] if len(sources) == 1 else CompositeDiscovery(sources)
