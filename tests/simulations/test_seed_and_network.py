"""Seed forking and the network model on their own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentnode.simulations.network import LAN, WAN, SimNetwork
from agentnode.simulations.scheduler import Scheduler, SchedulerOverflow
from agentnode.simulations.seed import derive, fork


def test_streams_are_independent_of_each_other() -> None:
    a = fork(42, "node", 1)
    first = [a.random() for _ in range(3)]
    noisy = fork(42, "node", 2)
    [noisy.random() for _ in range(1000)]  # draws in another stream shift nothing here
    assert [fork(42, "node", 1).random() for _ in range(1)] == first[:1]
    assert derive(42, "node", 1) != derive(42, "node", 2) != derive(43, "node", 1)


def test_labels_are_typed_and_delimited() -> None:
    assert derive(1, "a", 1) != derive(1, "a1")
    assert derive(1, "1") != derive(1, 1)
    assert derive(1, "ab", "c") != derive(1, "a", "bc")
    assert derive(7, "x") == 10 ** 0 * derive(7, "x")  # a pure function
    with pytest.raises(TypeError):
        derive(1, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        derive(-1)


def test_scheduler_orders_by_time_then_insertion_and_bounds_itself() -> None:
    s = Scheduler(events_pending_max=3)
    s.push(5, 1, "b")
    s.push(5, 1, "c")
    s.push(2, 1, "a")
    with pytest.raises(SchedulerOverflow):
        s.push(9, 1, "d")
    assert [s.pop()[3] for _ in range(3)] == ["a", "b", "c"]
    assert s.now_ms == 5
    with pytest.raises(ValueError, match="already at 5"):
        s.push(4, 1)


def test_loss_rate_matches_the_setting() -> None:
    net = SimNetwork(LAN, 2, fork(3, "net"))
    net.set_loss(0.1)
    lost = sum(net.route(0, 1, 100, t) < 0 for t in range(20_000))
    assert 1_700 < lost < 2_300


def test_links_are_fifo_unless_reordering_is_on() -> None:
    net = SimNetwork(WAN, 6, fork(3, "net"))
    arrivals = [net.route(0, 1, 100, t) for t in range(2_000)]
    assert arrivals == sorted(arrivals)
    net.set_reorder(0.3)
    arrivals = [net.route(0, 1, 100, t) for t in range(2_000, 4_000)]
    assert arrivals != sorted(arrivals)


def test_wan_regions_are_slower_than_inside_a_region() -> None:
    net = SimNetwork(WAN, 6, fork(3, "net"))
    local = sorted(net.latency_ms(0, 3) for _ in range(500))  # same region (round-robin over 3)
    remote = sorted(net.latency_ms(0, 1) for _ in range(500))
    assert local[250] <= 3 and remote[250] >= WAN.inter_region_ms_min


def test_clog_queues_then_tail_drops() -> None:
    net = SimNetwork(LAN, 2, fork(3, "net"))
    net.clog(0, egress_bytes_per_s=10_000)  # 10 bytes per ms
    first = net.route(0, 1, 1_000, 0)
    second = net.route(0, 1, 1_000, 0)
    assert 100 <= first < second
    drops = sum(net.route(0, 1, 1_000, 0) < 0 for _ in range(100))
    assert drops > 0 and net.dropped_clog == drops
    net.unclog(0)
    assert net.route(0, 1, 1_000, 10_000) < 10_100


def test_partition_groups_and_heal() -> None:
    net = SimNetwork(LAN, 4, fork(3, "net"))
    net.partition([[0, 1], [2, 3]])
    assert net.route(0, 2, 10, 0) < 0 and net.route(3, 1, 10, 0) < 0 and net.route(0, 1, 10, 0) > 0
    net.heal()
    assert net.route(0, 2, 10, 1) > 0


@given(st.integers(0, 2**64 - 1), st.lists(st.text(max_size=5) | st.integers(-5, 5), max_size=4))
def test_derive_is_stable_and_in_range(seed: int, labels: list[str | int]) -> None:
    value = derive(seed, *labels)
    assert 0 <= value < 2**64
    assert value == derive(seed, *labels)
