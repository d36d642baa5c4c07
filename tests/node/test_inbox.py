"""The durable inbox (node/inbox.py): receipts survive a reopen, duplicates are recognised, the window is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentnode.agent_messages import MessageId
from agentnode.inbox import Inbox, InboxItem


def _item(origin: str, counter: int, epoch: int = 1, agent: str = "a@n2") -> InboxItem:
    return InboxItem(MessageId(origin, epoch, counter), origin, f"s@{origin}", agent, 0, 1, b"p%d" % counter, None)


def test_accept_reports_new_and_known_ids_across_a_reopen(tmp_path: Path) -> None:
    with Inbox.in_data_dir(tmp_path) as inbox:
        assert inbox.accept([_item("n1", 1), _item("n1", 2)], 1000) == [True, True]
        assert inbox.accept([_item("n1", 2), _item("n1", 3)], 1001) == [False, True]
        inbox.done([MessageId("n1", 1, 1)])
    with Inbox.in_data_dir(tmp_path) as inbox:  # a restart: what was recorded is still known
        assert inbox.accept([_item("n1", 1), _item("n1", 3), _item("n1", 4)], 1002) == [False, False, True]
        pending = inbox.pending()
        assert [p.msg_id.counter for p in pending] == [2, 3, 4]  # 1 was handled
        assert pending[0].payload == b"p2" and pending[0].dest_agent == "a@n2"
        assert inbox.seen(MessageId("n1", 1, 1)) and not inbox.seen(MessageId("n1", 1, 9))


def test_done_drops_the_payload_and_is_idempotent(tmp_path: Path) -> None:
    with Inbox.in_data_dir(tmp_path) as inbox:
        inbox.accept([_item("n1", c) for c in range(1, 6)], 0)
        assert inbox.done([MessageId("n1", 1, c) for c in (1, 2)]) == 2
        assert inbox.done([MessageId("n1", 1, 2), MessageId("n1", 1, 99)]) == 0
        assert [p.msg_id.counter for p in inbox.pending()] == [3, 4, 5]


def test_the_window_per_sender_is_bounded_and_keeps_unhandled_rows(tmp_path: Path) -> None:
    with Inbox.in_data_dir(tmp_path, per_sender=100) as inbox:
        inbox.accept([_item("n1", 1)], 0)  # never handled: must survive collection
        for start in range(2, 400, 50):
            batch = [_item("n1", c) for c in range(start, start + 50)]
            inbox.accept(batch, 0)
            inbox.done([i.msg_id for i in batch])
        inbox.accept([_item("n2", 1)], 0)
        assert len(inbox) <= 100 + 10 + 50 + 1 + 1
        assert inbox.seen(MessageId("n1", 1, 1))  # pending rows are owed to a handler
        assert inbox.seen(MessageId("n1", 1, 399)) and not inbox.seen(MessageId("n1", 1, 5))
        # An id that fell out of the window is new again (the documented limit of the window).
        assert inbox.accept([_item("n1", 5)], 0) == [True]


def test_max_senders_forgets_the_sender_seen_longest_ago(tmp_path: Path) -> None:
    with Inbox.in_data_dir(tmp_path, max_senders=2) as inbox:
        for origin in ("n1", "n2", "n3"):
            inbox.accept([_item(origin, 1)], 0)
            inbox.done([MessageId(origin, 1, 1)])
        assert not inbox.seen(MessageId("n1", 1, 1))
        assert inbox.seen(MessageId("n3", 1, 1))


def test_misuse_is_a_local_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Inbox(tmp_path / "x", synchronous="SOMETIMES")
    with pytest.raises(RuntimeError, match="open"):
        Inbox(tmp_path / "x").accept([_item("n1", 1)], 0)


def test_handle_runs_inside_the_transaction_and_keeps_only_what_it_returns(tmp_path: Path) -> None:
    calls: list[list[bool]] = []

    def handle(fresh: list[bool]) -> list[InboxItem]:
        calls.append(fresh)
        return [_item("n1", 2)]  # 1 was handled at once, 2 was queued

    with Inbox.in_data_dir(tmp_path) as inbox:
        assert inbox.accept([_item("n1", 1), _item("n1", 2)], 0, handle) == [True, True]
        assert calls == [[True, True]]
        assert [p.msg_id.counter for p in inbox.pending()] == [2]
        assert inbox.seen(MessageId("n1", 1, 1))  # handled at once: recorded without a payload


def test_a_failed_commit_says_whether_the_handlers_ran(tmp_path: Path) -> None:
    from agentnode.inbox import InboxWriteFailed

    with Inbox.in_data_dir(tmp_path) as inbox:
        def handle(fresh: list[bool]) -> list[InboxItem]:
            return [InboxItem(MessageId("n1", 1, 1), "n1", "s", "a", 0, 1, None, None)]  # type: ignore[arg-type]

        with pytest.raises(InboxWriteFailed) as info:  # NOT NULL payload: the insert fails after handle ran
            inbox.accept([_item("n1", 1)], 0, handle)
        assert info.value.handled
        assert not inbox.seen(MessageId("n1", 1, 1))  # rolled back: the sender's resend is new again
