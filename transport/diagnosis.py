"""The transport-level probes behind `agentnode doctor`: each says what is wrong and what to do.

Every probe returns a `Diagnosis` (frozen): `ok`, a `problem` and a `fix` in words for people,
a stable `kind` for scripts and tests, and `detail` with what was observed. Probes never raise
for network trouble: trouble is their result. They do raise `ValueError` for caller misuse.

- `probe_bootstrap`: TCP connect + mutual TLS handshake with this node's identity; tells apart
  refused, timeout, another CA (either side), an expired certificate (either side) and success.
- `probe_bootstrap_frames`: the same question for any transport (QUIC clusters), asked the way a node
  asks it: start a transport of that kind with this node's identity, send one request frame the
  caller built, wait for the answer; refused, timeout, silent and success told apart.
- `probe_mdns` / `judge_mdns`: browse for a few seconds; no answers at all vs. only other
  clusters vs. peers found; a multicast self-test separates "blocked" from "nobody there".
- `probe_listen`: can the configured listen address be bound, and if not, who answers there.
- `judge_clock_skew`: a pure function over a peer's reported wall time (the node gets it from a
  membership hello), with `MAX_CLOCK_SKEW_MS`.
- `check_certificate`: our own certificate's validity window.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import logging
import os
import socket
import ssl
import time
from dataclasses import asdict, dataclass

from cryptography import x509

from agentnode.transport.base import Address, PeerRefused, Transport
from agentnode.transport.identity import CLOCK_SKEW_ALLOWANCE, NodeIdentity, node_id_from_certificate
from agentnode.transport.mdns import MdnsDiscovery, MdnsError, MdnsStats
from agentnode.transport.tls import ALPN, client_context

__all__ = [
    "CERT_EXPIRY_WARNING_DAYS",
    "MAX_CLOCK_SKEW_MS",
    "Diagnosis",
    "check_certificate",
    "judge_clock_skew",
    "judge_mdns",
    "probe_bootstrap",
    "probe_bootstrap_frames",
    "probe_listen",
    "probe_mdns",
]

MAX_CLOCK_SKEW_MS = 500
"""Clocks further apart than this are reported (CockroachDB's default `--max-offset`, 500 ms).

Nothing in the protocol orders events by wall clock, but message deadlines/TTLs, logs and
certificate validity do read it; beyond `identity.CLOCK_SKEW_ALLOWANCE` (5 min) fresh
certificates are refused as not yet valid."""
CERT_EXPIRY_WARNING_DAYS = 14
"""Our certificate is reported (still ok) when it expires sooner than this."""
CONNECT_TIMEOUT_S = 3.0
"""Bound on the TCP connect and, separately, on the TLS handshake of one probe."""
POST_HANDSHAKE_WAIT_S = 0.5
"""In TLS 1.3 the server checks our certificate after our side finished; its refusal (an alert) arrives within an RTT."""
MDNS_PROBE_S = 3.0
"""Browse this long: RFC 6762 §5.2 sends the first queries within 1 s and §6 answers within 20-120 ms."""


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """One finding: whether it is fine, what is wrong and what to do."""

    check: str
    """Which probe: `bootstrap`, `mdns`, `listen`, `clock`, `certificate`."""
    target: str
    """What was probed: an address, the interfaces, a peer."""
    ok: bool
    kind: str
    """A stable code for scripts and tests, for example `ok`, `refused`, `timeout`, `peer_other_ca`."""
    problem: str = ""
    """What is wrong, in words; empty when ok."""
    fix: str = ""
    """What to do about it; empty when ok."""
    detail: str = ""
    """What was observed (peer id, counts, timings)."""
    peer_id: str | None = None
    """The node id that answered, when one did."""

    def to_dict(self) -> dict[str, object]:
        """Plain values for `--json` output."""
        return asdict(self)


# -- bootstrap reachability -----------------------------------------------------------------------


async def probe_bootstrap(
    address: Address,
    identity: NodeIdentity,
    *,
    expected_node_id: str | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> Diagnosis:
    """Connect to `address` as this node would (mutual TLS 1.3 with `identity`) and explain the outcome."""
    target = str(address)

    def result(kind: str, problem: str = "", fix: str = "", detail: str = "", peer_id: str | None = None) -> Diagnosis:
        return Diagnosis("bootstrap", target, kind == "ok", kind, problem, fix, detail, peer_id)

    own = check_certificate(identity)
    context = client_context(identity)  # exactly what the node's TLS transport dials with
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address.host, address.port), timeout_s)
    except asyncio.TimeoutError:
        return result(
            "timeout",
            f"no answer from {target} within {timeout_s:g} s",
            "is the host up and reachable? a firewall may be dropping the packets (check that TCP "
            f"{address.port} is open on the seed and on the path)",
        )
    except ConnectionRefusedError:
        return result(
            "refused",
            f"connection refused by {target}: nothing listens on that port",
            "is a node running there, on that port? (`agentnode status` on that machine); a firewall may also reject it",
        )
    except socket.gaierror as exc:
        return result("unresolvable", f"cannot resolve {address.host!r}: {exc.strerror or exc}", "check the host name in --bootstrap, or use an IP address")
    except OSError as exc:
        return result(
            "unreachable",
            f"cannot connect to {target}: {exc.strerror or exc}",
            "check the address and the route to it (`ip route get`), VPN and firewall settings",
        )
    connected_ms = (time.monotonic() - started) * 1000
    try:
        try:
            await asyncio.wait_for(writer.start_tls(context), timeout_s)
        except asyncio.TimeoutError:
            return result(
                "tls_timeout",
                f"{target} accepts TCP connections but does not complete a TLS handshake within {timeout_s:g} s",
                "another program may hold that port, or the node there is overloaded; check what listens there (`ss -ltnp`)",
                f"TCP connect {connected_ms:.1f} ms",
            )
        except ssl.SSLCertVerificationError as exc:
            return result(*_judge_peer_certificate(exc, target, own))
        except (ssl.SSLError, ConnectionError) as exc:
            return result(*_judge_tls_failure(exc, target, own))
        handshake_ms = (time.monotonic() - started) * 1000
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            peer_id = node_id_from_certificate(x509.load_der_x509_certificate(der)) if der else None
        except (PeerRefused, ValueError) as exc:
            return result(
                "bad_peer_certificate",
                f"{target} presented a certificate from the cluster CA that is not a valid node certificate: {exc}",
                "re-issue that node's certificate with `agentnode ca issue`",
            )
        if peer_id is None:
            return result("bad_peer_certificate", f"{target} presented no certificate", "is that an agentnode node?")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn is not None and alpn != ALPN:
            return result(
                "not_agentnode", f"{target} speaks TLS with a certificate from our CA but protocol {alpn!r}, not {ALPN!r}",
                "check the port: another service of this CA listens there", peer_id=peer_id,
            )
        if expected_node_id is not None and peer_id != expected_node_id:
            return result(
                "wrong_peer",
                f"{target} is node {peer_id}, not the expected {expected_node_id}",
                "the address now belongs to another node (a restart with a new data directory?); update the address",
                peer_id=peer_id,
            )
        # TLS 1.3: the server judges our certificate after we finished; its alert, if any, comes now.
        # An OpenSSL server sends an alert; an asyncio server just closes, so EOF here is a refusal too.
        wait_s = max(POST_HANDSHAKE_WAIT_S, 2 * (handshake_ms - connected_ms) / 1000)
        try:
            data = await asyncio.wait_for(reader.read(1), wait_s)
        except asyncio.TimeoutError:
            data = None
        except ssl.SSLError as exc:
            return result(*_judge_tls_failure(exc, target, own), peer_id=peer_id)
        except ConnectionError:
            data = b""  # reset instead of close: the same refusal
        if data == b"":
            return result(*_judge_silent_refusal(identity, target, peer_id, own), peer_id=peer_id)
        version = ssl_object.version() if ssl_object is not None else "TLS"
        detail = f"node {peer_id}, {version}, connect {connected_ms:.1f} ms, handshake {handshake_ms:.1f} ms"
        if not own.ok or own.kind == "expires_soon":
            detail += f"; note: {own.problem}"
        return result("ok", detail=detail, peer_id=peer_id)
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass


async def probe_bootstrap_frames(
    address: Address,
    identity: NodeIdentity,
    transport: Transport,
    request: object,
    *,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> Diagnosis:
    """Send `request` to `address` over `transport` (not yet started) and explain the outcome.

    For transports whose handshake cannot be driven step by step from here (QUIC: the client proves
    its identity inside the channel, decision 0010), the only honest probe is the one a node makes:
    a frame the peer answers (the caller builds it, e.g. a membership ping). Any frame back proves
    both directions were authenticated; a refused handshake shows in the transport's counters.
    """
    target = str(address)

    def result(kind: str, problem: str = "", fix: str = "", detail: str = "", peer_id: str | None = None) -> Diagnosis:
        return Diagnosis("bootstrap", target, kind == "ok", kind, problem, fix, detail, peer_id)

    own = check_certificate(identity)
    answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    refusals = _RefusalLog(target)
    transport_log = logging.getLogger("agentnode.transport")
    transport_log.addFilter(refusals)

    def on_frame(sender_id: str, frame: object) -> None:
        if not answered.done():
            answered.set_result(sender_id)

    transport.set_handler(on_frame)
    started = time.monotonic()
    try:
        await transport.start()
    except OSError as exc:
        return result("probe_failed", f"cannot open a local socket for the probe: {exc}", "check local firewall/socket limits")
    try:
        try:
            transport.send(address, request)
        except ValueError as exc:
            return result("unresolvable", f"cannot send to {target}: {exc}", "check the host name in --bootstrap, or use an IP address")
        deadline = started + timeout_s
        while not answered.done() and time.monotonic() < deadline:
            stats = transport.stats()
            if stats.connections_refused or stats.dial_failures:
                break
            await asyncio.sleep(0.02)
        rtt_ms = (time.monotonic() - started) * 1000
        if answered.done():
            peer_id = answered.result()
            detail = f"node {peer_id}, first answer after {rtt_ms:.1f} ms (handshake included)"
            if not own.ok or own.kind == "expires_soon":
                detail += f"; note: {own.problem}"
            return result("ok", detail=detail, peer_id=peer_id)
        stats = transport.stats()
        if refusals.ours:  # our side refused the peer's certificate, and logged why
            return result(*_judge_refused_peer(refusals.ours[0], target))
        if stats.connections_refused:
            kind, problem, fix, detail = _judge_silent_refusal(identity, target, None, own)
            return result(kind, problem, fix, detail)
        if stats.dial_failures:
            return result(
                "unreachable",
                f"cannot establish a connection to {target}",
                "is a node running there with the same transport (`agentnode status` there shows it)? "
                f"a firewall may be dropping UDP/TCP {address.port}",
            )
        if stats.connections_open:
            return result(
                "no_answer",
                f"{target} accepted the connection but did not answer within {timeout_s:g} s",
                "is it a node of this cluster (same --cluster name)? is it overloaded?",
                peer_id=None,
            )
        return result(
            "timeout",
            f"no answer from {target} within {timeout_s:g} s",
            "is the host up and a node running there with this transport? a firewall may be dropping "
            f"the packets (check that port {address.port} is open on the seed and on the path)",
        )
    finally:
        transport_log.removeFilter(refusals)
        await transport.close()


class _RefusalLog(logging.Filter):
    """Collects the transport's "refused connection to TARGET: reason" lines (and lets them through)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self._prefix = f"to {target}"
        self.ours: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "refused connection %s: %s" and len(record.args or ()) == 2:
            who, reason = record.args  # type: ignore[misc]
            if str(who).startswith(self._prefix) and len(self.ours) < 8:
                self.ours.append(str(reason))
        return True


def _judge_refused_peer(reason: str, target: str) -> tuple[str, str, str, str]:
    """Our transport refused the peer's certificate; the verify message says why (OpenSSL wording)."""
    text = reason.lower()
    if "expired" in text:
        return ("peer_cert_expired", f"refused: the certificate of {target} has expired",
                "re-issue that node's certificate (`agentnode ca issue` on the CA machine) and restart it", reason)
    if "not yet valid" in text:
        return ("peer_cert_not_yet_valid", f"refused: the certificate of {target} is not valid yet: this machine's clock is behind (or the CA's is ahead)",
                "synchronise clocks (NTP: `timedatectl set-ntp true` or chrony) on this machine and the CA machine", reason)
    if "issuer" in text or "self signed" in text or "self-signed" in text:
        return ("peer_other_ca", f"refused: the certificate of {target} is from another CA than this node's ({reason})",
                "issue this node's certificate from the cluster's CA (`agentnode ca issue --ca-dir <cluster CA>`), "
                "or check that --bootstrap points at the right cluster", reason)
    return ("peer_refused", f"refused {target}: {reason}",
            "check that the address belongs to a node of this cluster (`agentnode doctor` there)", reason)


def _judge_silent_refusal(identity: NodeIdentity, target: str, peer_id: str | None, own: Diagnosis) -> tuple[str, str, str, str]:
    """The peer closed without saying why: use what we know about our own certificate."""
    who = f"{target} (node {peer_id})" if peer_id else target
    if own.kind in ("expired", "not_yet_valid"):
        return ("own_cert_expired" if own.kind == "expired" else "own_cert_not_yet_valid", f"{who} refused us: {own.problem}", own.fix, own.detail)
    if not _issued_by_own_ca(identity):
        return (
            "rejected_by_peer",
            f"{who} refused our certificate: it is not issued by the cluster CA this node trusts",
            "issue this node's certificate from the cluster's CA: `agentnode ca issue --ca-dir <cluster CA> --data-dir <this node's data dir>`",
            "the peer closed the connection right after the TLS handshake",
        )
    return (
        "closed_after_handshake",
        f"{who} closed the connection right after the TLS handshake: it refused this node",
        "this node may be revoked, or the peer trusts another CA; see the peer's log (`agentnode doctor` there)",
        "our certificate is valid and issued by our CA",
    )


def _issued_by_own_ca(identity: NodeIdentity) -> bool:
    try:
        identity.certificate().verify_directly_issued_by(identity.ca_certificate())
    except Exception:  # noqa: BLE001 - any failure means "not provably ours"
        return False
    return True


_VERIFY_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED (OpenSSL x509_vfy.h)
_VERIFY_NOT_YET_VALID = 9  # X509_V_ERR_CERT_NOT_YET_VALID


def _judge_peer_certificate(exc: ssl.SSLCertVerificationError, target: str, own: Diagnosis) -> tuple[str, str, str, str]:
    """Our side refused the peer's certificate."""
    code, message = exc.verify_code, exc.verify_message
    if code == _VERIFY_EXPIRED:
        return (
            "peer_cert_expired",
            f"TLS refused: the certificate of {target} has expired",
            "re-issue that node's certificate (`agentnode ca issue` on the CA machine) and restart it",
            message,
        )
    if code == _VERIFY_NOT_YET_VALID:
        return (
            "peer_cert_not_yet_valid",
            f"TLS refused: the certificate of {target} is not valid yet: this machine's clock is behind (or the CA's is ahead)",
            "synchronise clocks (NTP: `timedatectl set-ntp true` or chrony) on this machine and the CA machine",
            message,
        )
    return (
        "peer_other_ca",
        f"TLS refused: the certificate of {target} is from another CA than this node's ({message})",
        "issue this node's certificate from the cluster's CA (`agentnode ca issue --ca-dir <cluster CA>`), "
        "or check that --bootstrap points at the right cluster",
        f"OpenSSL verify error {code}: {message}",
    )


def _judge_tls_failure(exc: BaseException, target: str, own: Diagnosis) -> tuple[str, str, str, str]:
    """The handshake or the first read failed; alerts from the peer say why it refused us."""
    reason = (getattr(exc, "reason", None) or str(exc) or type(exc).__name__).upper()
    text = str(exc)
    if "CERTIFICATE_EXPIRED" in reason or own.kind == "expired":
        return (
            "own_cert_expired",
            f"TLS refused by {target}: our certificate expired" + (f" ({own.detail})" if own.detail else ""),
            "re-issue this node's certificate: `agentnode ca issue --ca-dir <cluster CA> --data-dir <this node's data dir>`",
            text,
        )
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "DECRYPT_ERROR" in reason or "UNSUPPORTED_CERTIFICATE" in reason:
        return (
            "rejected_by_peer",
            f"TLS refused by {target}: the peer does not accept our certificate (it is from another CA, or revoked)",
            "issue this node's certificate from the cluster's CA: `agentnode ca issue --ca-dir <cluster CA> --data-dir <this node's data dir>`",
            text,
        )
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "PACKET_LENGTH" in reason or "UNEXPECTED_EOF" in reason or "HTTP_REQUEST" in reason:
        return (
            "not_tls",
            f"{target} does not speak TLS: another program holds that port",
            "check the port in --bootstrap; find the program with `ss -ltnp` on that machine",
            text,
        )
    if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
        return ("tls_version", f"{target} does not offer TLS 1.3", "is that an agentnode node (or an old version)?", text)
    if isinstance(exc, ConnectionError):
        return (
            "closed_during_handshake",
            f"{target} closed the connection during the TLS handshake",
            "the peer refused this node or is not an agentnode node; see the peer's log",
            text,
        )
    return ("tls_failed", f"TLS with {target} failed: {text}", "see `detail`; check both nodes' certificates with `agentnode doctor`", text)


# -- own certificate --------------------------------------------------------------------------------


def check_certificate(identity: NodeIdentity, now: _dt.datetime | None = None) -> Diagnosis:
    """Is our own certificate inside its validity window (and not about to leave it)?"""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    target = str(identity.cert_path)
    try:
        cert = identity.certificate()
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a finding, not a crash
        return Diagnosis("certificate", target, False, "unreadable", f"cannot read our certificate: {exc}", "re-issue it with `agentnode ca issue`")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    window = f"valid {start.isoformat()} .. {end.isoformat()}"
    reissue = f"re-issue it: `agentnode ca issue --ca-dir <cluster CA> --data-dir {identity.data_dir}`"
    if now > end:
        return Diagnosis("certificate", target, False, "expired", f"our certificate expired at {end.isoformat()}", reissue, window, identity.node_id)
    if now < start:
        return Diagnosis(
            "certificate", target, False, "not_yet_valid",
            f"our certificate is not valid before {start.isoformat()}: this machine's clock is behind the CA's",
            "synchronise the clock (NTP)", window, identity.node_id,
        )
    left = end - now
    if left < _dt.timedelta(days=CERT_EXPIRY_WARNING_DAYS):
        return Diagnosis(
            "certificate", target, True, "expires_soon",
            f"our certificate expires in {left.days} days ({end.isoformat()})", reissue, window, identity.node_id,
        )
    return Diagnosis("certificate", target, True, "ok", detail=window, peer_id=identity.node_id)


# -- mDNS ------------------------------------------------------------------------------------------


async def probe_mdns(
    cluster: str,
    *,
    interfaces: list[str] | None = None,
    duration_s: float = MDNS_PROBE_S,
    probe_id: str | None = None,
) -> Diagnosis:
    """Browse for `duration_s` without announcing a node, then judge what was heard.

    A record of `mdns.SELF_CHECK_TYPE` (which nodes do not browse) is announced so the probe can
    tell "multicast blocked" (not even our own record came back) from "nobody there".
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    probe_id = probe_id or f"doctor-{int.from_bytes(os.urandom(5), 'big'):010x}"
    host = interfaces[0] if interfaces else "0.0.0.0"
    discovery = MdnsDiscovery(cluster, probe_id, Address(host, 9), interfaces=interfaces, advertise=False)
    where = ", ".join(interfaces) if interfaces else "every IPv4 interface"
    try:
        await discovery.start()
    except MdnsError as exc:
        return Diagnosis("mdns", where, False, "no_socket", str(exc), "pass an interface address that exists (`ip addr`), or use --bootstrap")
    try:
        await asyncio.sleep(duration_s)
        return judge_mdns(discovery.mdns_stats())
    finally:
        await discovery.close()


def judge_mdns(stats: MdnsStats) -> Diagnosis:
    """Judge what mDNS heard (from `probe_mdns` or a running node's `MdnsDiscovery.mdns_stats()`)."""
    where = ", ".join(stats.interfaces)
    others = "; ".join(f"cluster {c}: {len(ids)} node(s) ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})" for c, ids in stats.other_clusters)
    counts = (
        f"answers {stats.answers_seen}, queries {stats.queries_sent}, own record heard: {'yes' if stats.own_record_seen else 'no'}, "
        f"malformed {stats.malformed}, lookups failed {stats.resolve_failures}"
    )
    if stats.peers_known:
        detail = f"found {stats.peers_known} peer(s) of cluster {stats.cluster}" + (f"; also {others}" if others else "") + f"; {counts}"
        return Diagnosis("mdns", where, True, "ok", detail=detail)
    if stats.other_clusters:
        return Diagnosis(
            "mdns", where, False, "other_clusters_only",
            f"only nodes of other clusters answered: {others}; none of cluster {stats.cluster}",
            f"if those are your nodes, start this node with the same --cluster; clusters never merge by design",
            counts,
        )
    if not stats.own_record_seen:
        return Diagnosis(
            "mdns", where, False, "multicast_blocked",
            f"no mDNS answers at all on {where}, not even our own announcement: multicast (224.0.0.251, UDP 5353) is blocked",
            "allow UDP 5353 multicast in the firewall (and VPN client), choose the LAN interface with its address, "
            "or use --bootstrap HOST:PORT instead of mDNS",
            counts,
        )
    return Diagnosis(
        "mdns", where, False, "no_answers",
        f"no agentnode node answered on {where} (multicast works here: we heard our own announcement)",
        "start a node with mDNS enabled on this network; if one runs on another machine, its firewall may block "
        "UDP 5353, or it is on another network segment (mDNS does not cross routers): use --bootstrap",
        counts,
    )


# -- listen address ---------------------------------------------------------------------------------


async def probe_listen(address: Address, *, transport: str = "tls", timeout_s: float = CONNECT_TIMEOUT_S) -> Diagnosis:
    """Can this node bind `address` (TCP for `tls`, UDP for `quic`)? If the port is taken, say who answers there."""
    if transport not in ("tls", "quic"):
        raise ValueError(f"transport must be 'tls' or 'quic', got {transport!r}")
    target = f"{address} ({'TCP' if transport == 'tls' else 'UDP'})"
    kind = socket.SOCK_STREAM if transport == "tls" else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Diagnosis("listen", target, False, "unresolvable", f"cannot resolve {address.host!r}: {exc.strerror}", "use an IP address of this machine in --listen")
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does: TIME_WAIT is no conflict
        sock.bind(sockaddr)
    except OSError as exc:
        code = exc.errno
        if code == errno.EADDRINUSE:
            who = await _who_listens(address, timeout_s) if transport == "tls" else "another process (UDP)"
            return Diagnosis(
                "listen", target, False, "in_use",
                f"port {address.port} is already in use on {address.host}: {who}",
                "stop that process, or give this node another port (--listen HOST:PORT; port 0 picks a free one); "
                f"`ss -lntup 'sport = :{address.port}'` shows the holder",
                who,
            )
        if code == errno.EADDRNOTAVAIL:
            return Diagnosis(
                "listen", target, False, "not_local",
                f"{address.host} is not an address of this machine",
                "use an address from `ip addr`, or 0.0.0.0 with --advertise set to the address peers should dial",
            )
        if code == errno.EACCES:
            return Diagnosis(
                "listen", target, False, "permission",
                f"no permission to bind port {address.port} (ports below 1024 need privileges)",
                "use a port above 1024 (the default is 7946)",
            )
        return Diagnosis("listen", target, False, "bind_failed", f"cannot bind {address}: {exc.strerror or exc}", "check --listen")
    finally:
        sock.close()
    return Diagnosis("listen", target, True, "ok", detail=f"{address} can be bound")


async def _who_listens(address: Address, timeout_s: float) -> str:
    """Say who holds a TCP port: an agentnode node (by id), something else speaking TLS, or a non-TLS program."""
    host = "127.0.0.1" if address.host in ("0.0.0.0", "") else "::1" if address.host == "::" else address.host
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, address.port), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return "a process that does not accept connections there (bound but not listening)"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only want to read who it claims to be
    try:
        await asyncio.wait_for(writer.start_tls(context), timeout_s)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return "a TLS server without a certificate"
        try:
            peer = node_id_from_certificate(x509.load_der_x509_certificate(der))
        except (PeerRefused, ValueError):
            return "a TLS server that is not an agentnode node"
        return f"agentnode node {peer} (is this node already running?)"
    except (ssl.SSLError, ConnectionError, asyncio.TimeoutError):
        return "a program that does not speak TLS"
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass


# -- clock ------------------------------------------------------------------------------------------


def judge_clock_skew(
    local_ms: int,
    peer_ms: int,
    *,
    rtt_ms: int = 0,
    threshold_ms: int = MAX_CLOCK_SKEW_MS,
    peer: str = "the peer",
) -> Diagnosis:
    """Judge a peer's reported wall time against ours.

    `peer_ms` is the peer's wall clock (ms since the epoch) as carried in a hello/membership
    message; `local_ms` is our wall clock when that message arrived; `rtt_ms` is the round trip
    if known. The peer stamped its time about `rtt_ms / 2` before arrival, so the offset is
    estimated as `peer_ms + rtt_ms / 2 - local_ms`, uncertain by `rtt_ms / 2`; only an offset
    beyond `threshold_ms` plus that uncertainty is reported.
    """
    if rtt_ms < 0 or threshold_ms <= 0:
        raise ValueError("rtt_ms must be >= 0 and threshold_ms > 0")
    offset = peer_ms + rtt_ms // 2 - local_ms
    uncertainty = rtt_ms // 2
    direction = "ahead of" if offset > 0 else "behind"
    detail = f"{peer}'s clock is {abs(offset)} ms {direction} ours (+/- {uncertainty} ms)"
    if abs(offset) - uncertainty <= threshold_ms:
        return Diagnosis("clock", peer, True, "ok", detail=detail)
    allowance_ms = int(CLOCK_SKEW_ALLOWANCE.total_seconds() * 1000)
    severe = abs(offset) - uncertainty > allowance_ms
    problem = f"clock skew: {detail}, more than the {threshold_ms} ms allowed"
    if severe:
        problem += f"; beyond {allowance_ms // 60000} min, newly issued certificates are refused as not yet valid"
    return Diagnosis(
        "clock", peer, False, "skew_severe" if severe else "skew",
        problem,
        "synchronise clocks with NTP on both machines (`timedatectl set-ntp true`, or chrony/ntpd)",
        detail,
    )
