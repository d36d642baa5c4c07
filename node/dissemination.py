"""Bounded piggyback queue: which membership updates ride on the next frames (SWIM §4.1, memberlist
TransmitLimitedQueue).

Each update is sent at most `retransmit_limit(N)` times; fresher (less sent) updates go first, and
among equals the newest first (memberlist#159: new facts beat old ones). A newer update about a
node replaces the queued one (memberlist `Invalidates`). Selection is O(updates taken + limit),
never O(queue): updates live in one insertion-ordered dict per transmit count.
"""

from __future__ import annotations

import math
from itertools import islice

from agentnode.messages import Update

__sans_io__ = True

__all__ = ["Dissemination", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, n_nodes: int) -> int:
    """memberlist util.go retransmitLimit: mult * ceil(log10(N + 1))."""
    return retransmit_mult * max(1, math.ceil(math.log10(n_nodes + 1)))


class Dissemination:
    """The queue; `enqueue` new facts, `take` a batch for each outgoing frame."""

    __slots__ = ("_buckets", "_where", "_max", "dropped", "_limit")

    def __init__(self, max_queued: int) -> None:
        self._buckets: list[dict[str, Update]] = [{}]
        """_buckets[t]: updates already sent t times, keyed by node id, oldest first."""
        self._where: dict[str, int] = {}
        """node id -> the bucket holding its update."""
        self._max = max_queued
        self._limit = 1
        self.dropped = 0
        """Updates dropped because the queue was full."""

    def __len__(self) -> int:
        return len(self._where)

    def set_limit(self, limit: int) -> None:
        """Set the retransmit limit (call when the cluster size estimate changes)."""
        self._limit = max(1, limit)

    def enqueue(self, update: Update) -> None:
        """Queue `update`, replacing any queued update about the same node."""
        node_id = update.node_id
        where = self._where.get(node_id)
        if where is not None:
            del self._buckets[where][node_id]
        elif len(self._where) >= self._max:
            self._drop_one()
        self._buckets[0][node_id] = update
        self._where[node_id] = 0

    def take(self, max_updates: int) -> tuple[Update, ...]:
        """Up to `max_updates` updates for one frame; counts the transmission, retires spent ones."""
        where = self._where
        if not where:
            return ()
        limit = self._limit
        buckets = self._buckets
        taken: list[Update] = []
        moved_in = 0
        """Updates just moved into the current bucket by this take; they are not taken twice."""
        for t in range(len(buckets)):
            bucket = buckets[t]
            skip, moved_in = moved_in, 0
            if len(bucket) <= skip:
                continue
            # Newest first, skipping the updates this take just moved here (they sit at the end).
            picks = list(islice(reversed(bucket), skip, skip + max_updates - len(taken)))
            nxt = t + 1
            if nxt < limit:
                if nxt == len(buckets):
                    buckets.append({})
                dest = buckets[nxt]
                pop = bucket.pop
                for node_id in picks:
                    update = pop(node_id)
                    taken.append(update)
                    dest[node_id] = update
                    where[node_id] = nxt
                moved_in = len(picks)
            else:
                for node_id in picks:
                    taken.append(bucket.pop(node_id))
                    del where[node_id]
            if not bucket:
                # A dict keeps its table after a join burst emptied it (up to `broadcast_queue_max`
                # slots per bucket, per node); start afresh.
                buckets[t] = {}
            if len(taken) >= max_updates:
                break
        if not where:
            self._where = {}
        return tuple(taken)

    def peek(self, node_id: str) -> Update | None:
        """The queued update about `node_id`, if any."""
        where = self._where.get(node_id)
        return None if where is None else self._buckets[where][node_id]

    def _drop_one(self) -> None:
        for bucket in reversed(self._buckets):
            if bucket:
                node_id = next(iter(bucket))
                del bucket[node_id]
                del self._where[node_id]
                self.dropped += 1
                return
