"""`agentnode doctor`: explain why a node does not see its peers, with a fix for each problem.

The probes live in `agentnode.transport.diagnosis`; this module decides which to run from what the
node's data directory and (if it runs) the node itself say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentnode.config import DEFAULT_PORT, NodeConfig
from agentnode.control import ControlClient, ControlError
from agentnode.datadir import DataDir
from agentnode.transport.base import Address
from agentnode.transport.factory import create_transport
from agentnode.messages import Ping, encode
from agentnode.transport.diagnosis import (
    Diagnosis,
    check_certificate,
    judge_clock_skew,
    probe_bootstrap,
    probe_bootstrap_frames,
    probe_listen,
    probe_mdns,
)
from agentnode.transport.identity import IdentityError, NodeIdentity

__all__ = ["diagnose"]


async def diagnose(
    data_dir: Path,
    *,
    bootstrap: Sequence[str] = (),
    listen: str | None = None,
    cluster: str | None = None,
    mdns_seconds: float = 3.0,
    transport: str | None = None,
) -> list[Diagnosis]:
    """Run every check that applies and return the findings, problems first.

    `transport` ("tls" or "quic") is how seeds are probed; by default the running node's, else TLS.
    """
    if transport not in (None, "tls", "quic"):
        raise ValueError(f"unknown transport {transport!r}: use 'tls' or 'quic'")
    findings: list[Diagnosis] = []
    directory = DataDir(data_dir)
    try:
        identity = NodeIdentity.load(directory.path)
    except IdentityError as exc:
        return [Diagnosis("identity", str(directory.path), False, "no_identity", str(exc),
                          f"agentnode ca issue --ca-dir CA_DIR --data-dir {directory.path}")]
    findings.append(check_certificate(identity))

    status = await _node_status(directory)
    if status is None:
        findings.append(Diagnosis("node", str(directory.path), False, "not_running",
                                  "no node is running on this data directory",
                                  f"agentnode join --data-dir {directory.path} --listen HOST:PORT --bootstrap SEED:PORT"))
        if listen:
            findings.append(await probe_listen(Address.parse(listen, default_port=DEFAULT_PORT)))
    else:
        members = status.get("members", {})
        alive = int(members.get("alive", 0))
        if alive <= 1:
            findings.append(Diagnosis("node", status["address"], False, "alone",
                                      "the node runs but sees no other alive member",
                                      "give it a --bootstrap list of running nodes, or enable mDNS on a shared LAN; the findings below say why seeds fail"))
        else:
            findings.append(Diagnosis("node", status["address"], True, "ok", detail=f"{alive} alive members: {members}"))
        findings.extend(await _clock_findings(directory))
        bootstrap = list(bootstrap) or list(status.get("bootstrap", []))
        cluster = cluster or status.get("cluster")
        transport = transport or status.get("transport")

    seeds = [Address.parse(s, default_port=DEFAULT_PORT) for s in bootstrap]
    if seeds:
        if transport == "quic":
            findings.extend(await asyncio.gather(*(_probe_quic(seed, identity, cluster) for seed in seeds)))
        else:
            findings.extend(await asyncio.gather(*(probe_bootstrap(seed, identity) for seed in seeds)))
    if cluster and (status is None or status.get("mdns", True)):
        findings.append(await probe_mdns(cluster, duration_s=mdns_seconds))
    return sorted(findings, key=lambda f: f.ok)


async def _probe_quic(seed: Address, identity: Any, cluster: str | None) -> Diagnosis:
    """A QUIC seed is probed with what a joining node sends first: a membership ping, answered by an ack.

    A ping with no piggybacked updates changes nothing on the seed (SWIM acks any ping); the probe
    listens on an ephemeral port of the wildcard address and is closed at once.
    """
    name = cluster or NodeConfig.model_fields["cluster"].default
    probe = create_transport("quic", identity, Address("0.0.0.0", 0))
    ping = encode(Ping(seq=1, from_address="0.0.0.0:0", updates=()), name)
    finding = await probe_bootstrap_frames(seed, identity, probe, ping)
    if finding.kind == "no_answer" and cluster is None:
        return Diagnosis(finding.check, finding.target, False, finding.kind, finding.problem,
                         f"the probe used cluster name {name!r}; pass --cluster NAME if the cluster has another",
                         finding.detail)
    return finding


async def _node_status(directory: DataDir) -> dict[str, Any] | None:
    client = ControlClient(directory.control_socket, directory.path, timeout_s=5.0)
    try:
        return await asyncio.to_thread(client.call, "status")
    except ControlError:
        return None


async def _clock_findings(directory: DataDir) -> list[Diagnosis]:
    """Each alive peer's wall clock against ours, measured by the running node."""
    client = ControlClient(directory.control_socket, directory.path, timeout_s=5.0)
    try:
        readings = await asyncio.to_thread(client.call, "clock")
    except ControlError:
        return []
    return [
        judge_clock_skew(r["local_ms"], r["peer_ms"], rtt_ms=r["rtt_ms"], peer=f"node {r['node_id']}")
        for r in readings
    ]
