"""Find nodes of this cluster on the local network with multicast DNS (python-zeroconf, asyncio API).

Each node announces one service instance `<node id>._agentnode._tcp.local.` whose TXT record
carries the cluster name, the node id and the protocol version, and browses for the others.
Nodes of another cluster are never delivered (two clusters on one LAN do not merge) but are
counted, so `agentnode doctor` can say "found 3 nodes of cluster staging".

mDNS is the discovery that fails most often in practice (VPNs, firewalls, the wrong
interface; see docs/discovery.md), so this adapter refuses to fail silently:

- no socket could join the multicast group -> `start()` raises `MdnsError` naming the interfaces;
- multicast loops back to the sender on a working interface, so a node hears its own
  announcement; if it has not within `self_check_s`, a WARNING says multicast looks blocked;
- counters (queries, answers, peers, nodes of other clusters, malformed records) are in `mdns_stats()`.

By default the adapter announces and listens only on the interface that owns the advertised
address (loopback for 127.0.0.1), not on every interface: announcing a container or VPN
address is libp2p's most reported mDNS bug (docs/decisions/0061-mdns-interface-choice-and-self-check.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass

from zeroconf import NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agentnode.transport.base import Address
from agentnode.transport.discovery import DiscoveryError, DiscoveryStats, _Source

__all__ = [
    "MDNS_REFRESH_INTERVAL_S",
    "PROTOCOL_VERSION",
    "SELF_CHECK_TYPE",
    "SERVICE_TYPE",
    "MdnsDiscovery",
    "MdnsError",
    "MdnsPeer",
    "MdnsStats",
]

log = logging.getLogger("agentnode.discovery.mdns")

SERVICE_TYPE = "_agentnode._tcp.local."
"""The DNS-SD service type every node announces (RFC 6763 §7: `_<service>._tcp`)."""
SELF_CHECK_TYPE = "_agentnode-chk._udp.local."
"""A type nobody browses but a browse-only prober, used to hear its own record (multicast self-test)."""
PROTOCOL_VERSION = 1
"""Announced in TXT `v`; bump when the node's wire protocol changes incompatibly."""
TXT_CLUSTER, TXT_NODE, TXT_VERSION = "cluster", "node", "v"
MDNS_REFRESH_INTERVAL_S = 60.0
"""Re-deliver known peers, or re-query when none are known, this often (Serf `-discover` polls mDNS every 60 s)."""
SELF_CHECK_S = 10.0
"""Warn if our own announcement has not come back by then (RFC 6762 §8.3 announcing takes ~1-2 s)."""
RESOLVE_TIMEOUT_MS = 3000
"""How long one instance's SRV/TXT/A lookup may take (python-zeroconf's `get_service_info` default)."""
STARTUP_TIMEOUT_S = 5.0
"""Bound on zeroconf opening its sockets."""
CLOSE_TIMEOUT_S = 3.0
"""Bound on sending goodbyes (RFC 6762 §10.1: TTL 0 announcements) at close."""
MAX_PENDING_RESOLVES = 32
"""Concurrent lookups; announcements beyond this are dropped (counted) and caught at the next refresh."""
MAX_PEERS = 1024
"""Instances of our cluster remembered; more are ignored (counted)."""
MAX_OTHER_CLUSTER_NODES = 256
"""Instances of other clusters remembered for diagnosis."""
MAX_ADDRESSES_PER_PEER = 8
MAX_REMEMBERED_IDS = 4096
"""Node ids remembered for `peers_found`; beyond it the oldest is forgotten (and would count again)."""
MAX_LABEL_BYTES = 63
"""RFC 6763 §4.1.1 / RFC 1035 §2.3.4: a DNS label (the instance name) is at most 63 bytes."""
_CLUSTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_SERVICE_TYPE = re.compile(r"^_[a-z0-9](?:[a-z0-9-]{0,13}[a-z0-9])?\._(?:tcp|udp)\.local\.$")


class MdnsError(DiscoveryError):
    """mDNS cannot work here: the message names the interface, the cause and what to try."""


@dataclass(frozen=True, slots=True)
class MdnsPeer:
    """One announced node, decoded from its SRV, TXT and address records."""

    node_id: str
    cluster: str
    addresses: tuple[Address, ...]
    version: int


@dataclass(frozen=True, slots=True)
class MdnsStats:
    """What mDNS saw; `agentnode doctor` judges it (transport/diagnosis.py)."""

    cluster: str
    interfaces: tuple[str, ...]
    """Where zeroconf listens: IP addresses, or `all` for every IPv4 interface."""
    advertised: tuple[Address, ...]
    """What we announce (empty when browse-only)."""
    running: bool
    announced: bool
    """Our record passed RFC 6762 §8.1 probing and was announced."""
    own_record_seen: bool
    """Our own announcement came back to us over multicast: the interface carries multicast."""
    queries_sent: int
    """Query rounds this adapter started: browse (re)starts, each an RFC 6762 §5.2 burst, plus lookups that missed the cache."""
    answers_seen: int
    """Service announcements and changes heard for the browsed types, ours included."""
    peers_found: int
    """Distinct nodes of our cluster found since start (exact up to `MAX_REMEMBERED_IDS`)."""
    peers_known: int
    """Nodes of our cluster currently announced."""
    other_clusters: tuple[tuple[str, tuple[str, ...]], ...]
    """Currently announced nodes of other clusters: (cluster, node ids), sorted."""
    malformed: int
    """Announcements with missing or invalid TXT/SRV data (counted, ignored)."""
    resolve_failures: int
    """Announced instances whose records did not arrive in time."""
    dropped: int
    """Announcements ignored because a bound (pending lookups, peers) was reached."""
    errors: int
    last_error: str

    @property
    def other_cluster_nodes(self) -> int:
        return sum(len(ids) for _, ids in self.other_clusters)


class MdnsDiscovery(_Source):
    """Announce this node and find the others of `cluster` by multicast DNS.

    `interfaces`: IP addresses to run mDNS on. None derives them from `address`: a specific
    IP means that interface only, 127.0.0.1 means loopback (tests), a wildcard or host name
    means every IPv4 interface. `advertise=False` browses only (what `agentnode doctor` does);
    it then announces a record of `SELF_CHECK_TYPE` instead, to test that multicast loops back.
    """

    def __init__(
        self,
        cluster: str,
        node_id: str,
        address: Address,
        *,
        interfaces: list[str] | None = None,
        advertise: bool = True,
        refresh_interval_s: float = MDNS_REFRESH_INTERVAL_S,
        self_check_s: float = SELF_CHECK_S,
        resolve_timeout_ms: int = RESOLVE_TIMEOUT_MS,
        service_type: str = SERVICE_TYPE,
    ) -> None:
        super().__init__("mdns")
        if not _CLUSTER.match(cluster):
            raise ValueError(f"cluster name {cluster!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if not _NODE_ID.match(node_id):
            raise ValueError(
                f"node id {node_id!r} cannot be an mDNS instance name: use 1-{MAX_LABEL_BYTES} letters, digits, '_' or '-'"
            )
        if advertise and not 0 < address.port <= 65535:
            raise ValueError(f"cannot advertise {address}: give the bound port (start the transport first), not 0")
        if refresh_interval_s <= 0 or self_check_s <= 0 or resolve_timeout_ms <= 0:
            raise ValueError("refresh_interval_s, self_check_s and resolve_timeout_ms must be > 0")
        for ip in interfaces or []:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"mDNS interface {ip!r} is not an IP address; give the address of an interface (see `ip addr`)") from None
        if not _SERVICE_TYPE.match(service_type):
            raise ValueError(f"service type {service_type!r}: expected _<name>._tcp.local. with a 1-15 character name (RFC 6335 §5.1)")
        self.cluster = cluster
        self.node_id = node_id
        self.address = address
        self.advertise = advertise
        self.service_type = service_type
        self.refresh_interval_s = refresh_interval_s
        self.self_check_s = self_check_s
        self.resolve_timeout_ms = resolve_timeout_ms
        self._interfaces_arg = list(interfaces) if interfaces is not None else None
        self._interfaces: list[str] | None = None
        self._own_type = service_type if advertise else SELF_CHECK_TYPE
        self._own_name = f"{node_id}.{self._own_type}"
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._advertised: tuple[Address, ...] = ()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[str, bool] = {}
        """Instance name -> lookup running (True: re-run it when done, another change arrived)."""
        self._peers: dict[str, MdnsPeer] = {}
        self._others: dict[str, MdnsPeer] = {}
        self._ever_found: dict[str, None] = {}
        """Node ids found since start (bounded); `_peers_found` counts first sightings."""
        self._peers_found = 0
        self._refresh_task: asyncio.Task[None] | None = None
        self._running = False
        self._announced = False
        self._own_seen = False
        self._queries_sent = 0
        self._answers_seen = 0
        self._malformed = 0
        self._resolve_failures = 0
        self._dropped = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the sockets, start browsing, announce (waits for RFC 6762 probing, about 1-2 s).

        Raises `MdnsError` if no interface can carry mDNS or our node id is already announced.
        """
        if self._running:
            raise RuntimeError("MdnsDiscovery.start() called twice; create a new instance to restart")
        interfaces = self._interfaces_arg if self._interfaces_arg is not None else _interfaces_for(self.address)
        self._interfaces = interfaces
        where = ", ".join(interfaces) if interfaces else "every IPv4 interface"
        try:
            self._zc = AsyncZeroconf(interfaces=interfaces) if interfaces else AsyncZeroconf()
            await asyncio.wait_for(self._zc.zeroconf.async_wait_for_start(), STARTUP_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            await self._close_zeroconf()
            cause = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            raise MdnsError(
                f"cannot open mDNS sockets (UDP 5353) on {where}: {cause}; check that the address belongs to this "
                "machine (`ip addr`) and that nothing holds UDP 5353 exclusively; or use --bootstrap instead"
            ) from exc
        if not self._zc.zeroconf.engine.senders:
            await self._close_zeroconf()
            raise MdnsError(
                f"no interface could join the mDNS multicast group 224.0.0.251 on {where}: the address is not on an "
                "up interface, or the interface has no multicast; pass an interface address that exists, or use --bootstrap"
            )
        self._running = True
        try:
            self._advertised = await self._addresses_to_advertise()
            types = [self.service_type] if self.advertise else [self.service_type, SELF_CHECK_TYPE]
            self._browser = AsyncServiceBrowser(self._zc.zeroconf, types, handlers=[self._on_change])
            self._queries_sent += 1
            await self._announce()
        except BaseException:
            await self.close()
            raise
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="agentnode-mdns-refresh")
        log.info(
            "mDNS: %s %s in cluster %s on %s",
            "announcing" if self.advertise else "browsing as",
            self.node_id,
            self.cluster,
            where,
        )

    async def refresh(self) -> None:
        """Re-deliver the peers we know; with none known, restart the browse so it queries again now."""
        if not self._running or self._zc is None:
            return
        if self._peers:
            self._deliver(self._known_addresses())
            return
        if self._browser is not None:
            await self._browser.async_cancel()
        types = [self.service_type] if self.advertise else [self.service_type, SELF_CHECK_TYPE]
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, types, handlers=[self._on_change])
        self._queries_sent += 1

    def peers(self) -> list[MdnsPeer]:
        """Nodes of our cluster currently announced, by node id."""
        return sorted(self._peers.values(), key=lambda p: p.node_id)

    def stats(self) -> DiscoveryStats:
        return self._stats(len(self._known_addresses()))

    def mdns_stats(self) -> MdnsStats:
        others: dict[str, list[str]] = {}
        for peer in self._others.values():
            others.setdefault(peer.cluster, []).append(peer.node_id)
        return MdnsStats(
            cluster=self.cluster,
            interfaces=tuple(self._interfaces) if self._interfaces else ("all",),
            advertised=self._advertised if self.advertise else (),
            running=self._running,
            announced=self._announced,
            own_record_seen=self._own_seen,
            queries_sent=self._queries_sent,
            answers_seen=self._answers_seen,
            peers_found=self._peers_found,
            peers_known=len(self._peers),
            other_clusters=tuple((c, tuple(sorted(ids))) for c, ids in sorted(others.items())),
            malformed=self._malformed,
            resolve_failures=self._resolve_failures,
            dropped=self._dropped,
            errors=self._errors,
            last_error=self._last_error,
        )

    async def close(self) -> None:
        """Withdraw our record (goodbye, RFC 6762 §10.1) and close the sockets. Safe to call twice."""
        self._running = False
        refresh, self._refresh_task = self._refresh_task, None
        tasks = [t for t in (refresh, *self._tasks) if t is not None]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.async_cancel()
        info, self._info = self._info, None
        if info is not None and self._zc is not None and self._announced:
            try:
                goodbye = await asyncio.wait_for(self._zc.async_unregister_service(info), CLOSE_TIMEOUT_S)
                await asyncio.wait_for(goodbye, CLOSE_TIMEOUT_S)
            except (asyncio.TimeoutError, OSError) as exc:
                log.warning("mDNS: goodbye for %s not sent (%s); peers forget us when the record's TTL runs out", self.node_id, exc)
        self._announced = False
        await self._close_zeroconf()

    # -- internals ----------------------------------------------------------------------------

    async def _announce(self) -> None:
        assert self._zc is not None
        properties = {TXT_CLUSTER: self.cluster, TXT_NODE: self.node_id, TXT_VERSION: str(PROTOCOL_VERSION)}
        port = self.address.port if self.advertise else 9  # RFC 863 discard port: the self-check record is never dialled
        self._info = AsyncServiceInfo(
            self._own_type,
            self._own_name,
            addresses=[ipaddress.ip_address(a.host).packed for a in self._advertised],
            port=port,
            properties=properties,
            server=f"{self.node_id}.local.",
        )
        try:
            # The self-check record has a random name: skip probing (cooperating_responders) to save ~1.5 s.
            announcement = await self._zc.async_register_service(self._info, cooperating_responders=not self.advertise)
        except NonUniqueNameException:
            self._info = None
            raise MdnsError(
                f"another node on this network already announces node id {self.node_id}: two nodes run with one "
                "identity (a copied data directory?); give each node its own data directory"
            ) from None
        self._announced = True
        task = asyncio.ensure_future(announcement)
        self._track(task)  # type: ignore[arg-type]

    async def _addresses_to_advertise(self) -> tuple[Address, ...]:
        host = self.address.host
        port = self.address.port if self.advertise else 9
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and not ip.is_unspecified:
            return (Address(str(ip), port),)
        if ip is None:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise MdnsError(f"cannot resolve the advertised host {host!r} to announce it over mDNS: {exc}") from exc
            found = list(dict.fromkeys(str(i[4][0]) for i in infos))
            return tuple(Address(a, port) for a in found[:MAX_ADDRESSES_PER_PEER])
        # A wildcard bind: announce the addresses mDNS runs on, else every non-loopback IPv4 address.
        candidates = list(self._interfaces or []) or _local_ipv4_addresses()
        if not candidates:
            raise MdnsError(f"listen address {self.address} is a wildcard and this machine has no IPv4 address to announce")
        return tuple(Address(a, port) for a in candidates[:MAX_ADDRESSES_PER_PEER])

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        """Called by zeroconf's browser on the event loop; must not block."""
        self._answers_seen += 1
        if name == self._own_name:
            if state_change is not ServiceStateChange.Removed:
                self._own_seen = True
            return
        if service_type == SELF_CHECK_TYPE:
            return  # another prober's self-test
        if state_change is ServiceStateChange.Removed:
            gone = self._peers.pop(name, None)
            self._others.pop(name, None)
            if gone is not None:
                log.info("mDNS: %s withdrew its record", gone.node_id)
            return
        if name in self._pending:
            self._pending[name] = True
            return
        if len(self._pending) >= MAX_PENDING_RESOLVES:
            self._dropped += 1
            return
        self._pending[name] = False
        self._track(asyncio.ensure_future(self._resolve(service_type, name)))

    async def _resolve(self, service_type: str, name: str) -> None:
        try:
            while self._running and self._zc is not None:
                info = AsyncServiceInfo(service_type, name)
                if not info.load_from_cache(self._zc.zeroconf):
                    self._queries_sent += 1
                    if not await info.async_request(self._zc.zeroconf, self.resolve_timeout_ms):
                        self._resolve_failures += 1
                        log.debug("mDNS: no SRV/TXT/address records for %s within %d ms", name, self.resolve_timeout_ms)
                        return
                self._accept(name, info)
                if not self._pending.get(name):
                    return
                self._pending[name] = False
        finally:
            self._pending.pop(name, None)

    def _accept(self, name: str, info: AsyncServiceInfo) -> None:
        peer, problem = _decode(info)
        if peer is None:
            self._malformed += 1
            log.warning("mDNS: ignoring malformed announcement %s: %s", name, problem)
            return
        if peer.node_id == self.node_id:
            self._error(f"{name} announces our own node id {self.node_id} from {', '.join(map(str, peer.addresses))}")
            return
        if peer.cluster != self.cluster:
            if name not in self._others and len(self._others) >= MAX_OTHER_CLUSTER_NODES:
                self._dropped += 1
                return
            if name not in self._others:
                log.info("mDNS: ignoring node %s of cluster %s (this node is in cluster %s)", peer.node_id, peer.cluster, self.cluster)
            self._others[name] = peer
            return
        if peer.version != PROTOCOL_VERSION:
            log.warning("mDNS: node %s speaks protocol v%d, we speak v%d; dialling it anyway", peer.node_id, peer.version, PROTOCOL_VERSION)
        previous = self._peers.get(name)
        if previous is None and len(self._peers) >= MAX_PEERS:
            self._dropped += 1
            return
        self._peers[name] = peer
        if peer.node_id not in self._ever_found:
            if len(self._ever_found) >= MAX_REMEMBERED_IDS:
                del self._ever_found[next(iter(self._ever_found))]  # oldest first: insertion order
            self._ever_found[peer.node_id] = None
            self._peers_found += 1
            log.info("mDNS: found node %s at %s", peer.node_id, ", ".join(map(str, peer.addresses)))
        if previous is None or previous.addresses != peer.addresses:
            self._deliver(list(peer.addresses))

    async def _refresh_loop(self) -> None:
        started = asyncio.get_running_loop().time()
        warned = False
        interval = min(self.refresh_interval_s, self.self_check_s)
        while True:
            await asyncio.sleep(interval)
            elapsed = asyncio.get_running_loop().time() - started
            if not warned and not self._own_seen and elapsed >= self.self_check_s:
                warned = True
                where = ", ".join(self._interfaces) if self._interfaces else "every IPv4 interface"
                self._error(
                    f"our own announcement did not come back within {self.self_check_s:g} s on {where}: multicast "
                    "(224.0.0.251, UDP 5353) looks blocked by a firewall or VPN, so peers cannot find this node "
                    "through mDNS; run `agentnode doctor`, or use --bootstrap",
                    level=logging.ERROR,
                )
            if elapsed >= self.refresh_interval_s:
                interval = self.refresh_interval_s
                await self.refresh()

    def _known_addresses(self) -> list[Address]:
        found: list[Address] = []
        for peer in self.peers():
            found.extend(a for a in peer.addresses if a not in found)
        return found

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_zeroconf(self) -> None:
        zc, self._zc = self._zc, None
        if zc is not None:
            try:
                await asyncio.wait_for(zc.async_close(), CLOSE_TIMEOUT_S)
            except (asyncio.TimeoutError, OSError) as exc:
                log.warning("mDNS: closing zeroconf failed: %s", exc)


def _decode(info: AsyncServiceInfo) -> tuple[MdnsPeer | None, str]:
    """Turn one instance's records into a peer, or say what is wrong with them."""
    fields: dict[str, str] = {}
    for key, value in info.properties.items():
        try:
            fields[key.decode("utf-8")] = value.decode("utf-8") if value is not None else ""
        except UnicodeDecodeError:
            return None, "TXT record is not UTF-8"
    cluster, node_id, version = fields.get(TXT_CLUSTER, ""), fields.get(TXT_NODE, ""), fields.get(TXT_VERSION, "")
    if not _CLUSTER.match(cluster):
        return None, f"TXT {TXT_CLUSTER}={cluster!r} is missing or invalid"
    if not _NODE_ID.match(node_id):
        return None, f"TXT {TXT_NODE}={node_id!r} is missing or invalid"
    if not version.isdigit() or len(version) > 4:
        return None, f"TXT {TXT_VERSION}={version!r} is not a version number"
    port = info.port
    if port is None or not 0 < port <= 65535:
        return None, f"SRV port {port!r} is not dialable"
    addresses = []
    for host in info.parsed_scoped_addresses()[:MAX_ADDRESSES_PER_PEER]:
        address = Address(host, port)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        return None, "no address records"
    return MdnsPeer(node_id=node_id, cluster=cluster, addresses=tuple(addresses), version=int(version)), ""


def _interfaces_for(address: Address) -> list[str] | None:
    """Run mDNS where the node is reachable: that IP's interface, or every interface for a wildcard or name."""
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return None
    if ip.is_unspecified:
        return None
    if ip.version == 6 and ip.is_loopback:
        return ["127.0.0.1"]  # python-zeroconf cannot listen on ::1; loopback multicast works over IPv4
    return [str(ip)]


def _local_ipv4_addresses() -> list[str]:
    import ifaddr  # python-zeroconf's own dependency for enumerating interfaces

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback and ip.ip not in found:
                found.append(ip.ip)
    return found
