"""The asyncio driver of the name lease core: runs claims, renewals and releases through the Raft service.

`NameLeases` (node/names.py) decides; this class only runs what it returns against
``RaftService.claim_name / renew_name / release_name`` (forwarded to a voter from a non-voter), maps
errors to "certainly not applied" or "outcome unknown", wakes the core at its timer and tells the
agent service when an agent's advertised name state changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from agentnode.consensus.base import ConsensusError, NoQuorum, NotLeader
from agentnode.names import (
    NameConfig,
    NameEvent,
    NameLeases,
    NameOp,
    NameState,
    NameTableFull,
    NameTaken,
)

__all__ = ["NameKeeper", "OP_TIMEOUT_MS"]

log = logging.getLogger("agentnode.names")

OP_TIMEOUT_MS = 10_000
"""Bound on one lease operation: raft.FORWARD_TIMEOUT_MS (8 s) plus margin; then "outcome unknown"."""
FIRST_CLAIM_WAIT_MS = 3_000
"""How long `register_agent(unique=True)` waits for the first answer before registering the name
as unconfirmed (a voter without quorum answers NoQuorum within ~1.2 s; a lost forward takes 1 s)."""
RELEASE_WAIT_MS = 2_000
"""How long deregistering (and a clean shutdown) waits for releases to commit; beyond it the lease expires by TTL."""


def _not_applied_errors() -> tuple[type[BaseException], ...]:
    from agentnode.raft import NotVoter, RaftOverloaded, RaftUnavailable

    return (NoQuorum, NotLeader, NotVoter, RaftOverloaded, RaftUnavailable)


class NameKeeper:
    """Keeps the unique names of this node's agents leased. `claim`, `release`, `close`."""

    def __init__(self, node_id: str, raft: Callable[[], Any], clock: Callable[[], int], rng: random.Random,
                 config: NameConfig | None = None,
                 on_state: Callable[[str, NameState], None] | None = None,
                 on_event: Callable[[NameEvent], None] | None = None) -> None:
        self.core = NameLeases(node_id, rng, config)
        self._raft = raft
        """Returns the node's RaftService, or None while it has none."""
        self._clock = clock
        self._on_state = on_state or (lambda agent_id, state: None)
        self._on_event = on_event or (lambda event: None)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        """Operations in flight by op id."""
        self._results: dict[int, asyncio.Future[tuple[str | None, Any]]] = {}
        """First-claim waiters by op id."""
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._not_applied = _not_applied_errors()
        self._closed = False

    # -- API ------------------------------------------------------------------------------------

    async def claim(self, agent_id: str, name: str, wait_ms: int = FIRST_CLAIM_WAIT_MS) -> NameState:
        """Claim `name` for `agent_id`; wait up to `wait_ms` for the group's first answer.

        Raises `NameTaken` (another owner holds it) or `NameTableFull`; otherwise returns the state:
        CONFIRMED, or UNCONFIRMED when no quorum answered in time (the claim goes on in the background)."""
        self._ensure_running()
        op = self.core.claim(agent_id, name, self._clock())
        waiter: asyncio.Future[tuple[str | None, Any]] = asyncio.get_running_loop().create_future()
        self._results[op.op_id] = waiter
        self._run(op)
        try:
            outcome, result = await asyncio.wait_for(asyncio.shield(waiter), wait_ms / 1000)
        except asyncio.TimeoutError:
            outcome, result = None, None
        finally:
            self._results.pop(op.op_id, None)
        if outcome == "taken":
            lease = result.lease
            raise NameTaken(name, lease.owner, lease.expires_at_ms)
        if outcome == "full":
            raise NameTableFull(f"the cluster's name table is full; cannot lease {name!r} (release unused names)")
        if outcome is None:  # still waiting on the group: the agent registers with its name unconfirmed
            self.core.stop_waiting(agent_id, self._clock())
            self._drain()
        state = self.core.state(agent_id)
        if state is None:
            raise ValueError(f"the name of {agent_id!r} was released while it was being claimed")
        return state

    async def release(self, agent_id: str, wait_ms: int = RELEASE_WAIT_MS) -> bool:
        """Stop keeping `agent_id`'s name and give it back; True if the release committed in time."""
        op_id = self.core.inflight(agent_id)
        inflight = [self._tasks[op_id]] if op_id is not None and op_id in self._tasks else []
        op = self.core.release(agent_id)
        if op is None:
            return False
        if inflight:  # a claim landing after the release would hold the name until its TTL
            await asyncio.wait(inflight, timeout=wait_ms / 2000)
        try:
            result = await asyncio.wait_for(self._call(op), wait_ms / 1000)
        except (asyncio.TimeoutError, ConsensusError, ValueError) as exc:
            log.info("names: release of %r for %s did not commit (%s); it expires by its TTL", op.name, agent_id, exc)
            return False
        return bool(result.ok)

    def state(self, agent_id: str) -> NameState | None:
        return self.core.state(agent_id)

    async def close(self, wait_ms: int = RELEASE_WAIT_MS) -> None:
        """Release every name (bounded by `wait_ms` in all), then stop."""
        self._closed = True
        agents = [s.agent_id for s in self.core.states()]
        if agents:
            await asyncio.gather(*(self.release(a, wait_ms) for a in agents), return_exceptions=True)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- internals ------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._timer_loop(), name="name leases")

    def _run(self, op: NameOp) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(op), name=f"name {op.kind} {op.name}")
        self._tasks[op.op_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(op.op_id, None))

    async def _call(self, op: NameOp) -> Any:
        raft = self._raft()
        if raft is None:
            from agentnode.raft import RaftUnavailable

            raise RaftUnavailable("this node runs no Raft service yet")
        if op.kind == "claim":
            return await raft.claim_name(op.name, op.owner, op.ttl_ms)
        if op.kind == "renew":
            return await raft.renew_name(op.name, op.owner, op.ttl_ms)
        return await raft.release_name(op.name, op.owner)

    async def _execute(self, op: NameOp) -> None:
        result: Any = None
        error: str | None = None
        detail = ""
        try:
            result = await asyncio.wait_for(self._call(op), OP_TIMEOUT_MS / 1000)
        except asyncio.CancelledError:
            raise
        except self._not_applied as exc:
            error, detail = "not_applied", f"{type(exc).__name__}: {exc}"
        except (asyncio.TimeoutError, ConsensusError) as exc:
            error, detail = "unknown", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or caller misuse: never let the keeper die; retry later
            log.exception("names: %s of %r failed", op.kind, op.name)
            error, detail = "unknown", f"{type(exc).__name__}: {exc}"
        before = self.core.state(op.agent_id)
        outcome = self.core.on_result(op.op_id, self._clock(), result=result, error=error, detail=detail)  # type: ignore[arg-type]
        waiter = self._results.get(op.op_id)
        if waiter is not None and not waiter.done():
            waiter.set_result((outcome, result))
        after = self.core.state(op.agent_id)
        if after is not None and (before is None or (before.state, before.epoch) != (after.state, after.epoch)):
            self._tell(after)
        self._drain()
        self._wake.set()

    def _tell(self, state: NameState) -> None:
        try:
            self._on_state(state.agent_id, state)
        except Exception:  # the registry refused the update: log it, keep the lease going
            log.exception("names: advertising %s for %s failed", state.state, state.agent_id)

    def _drain(self) -> None:
        while (event := self.core.next_event()) is not None:
            log.info("names: %s", event)
            try:
                self._on_event(event)
            except Exception:  # one faulty listener must not stop the keeper
                log.exception("names: event listener failed")

    async def _timer_loop(self) -> None:
        while True:
            try:
                now = self._clock()
                before = {s.agent_id: (s.state, s.epoch) for s in self.core.states()}
                for op in self.core.handle_timer(now):
                    self._run(op)
                for state in self.core.states():
                    if before.get(state.agent_id) != (state.state, state.epoch):
                        self._tell(state)
                self._drain()
            except Exception:  # the keeper must keep renewing; the next wake-up retries
                log.exception("names: timer step failed")
            due = self.core.get_timer()
            self._wake.clear()
            delay = 3600.0 if due is None else max(0.005, (due - self._clock()) / 1000)
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
