"""The network fault model renders to one nft ruleset / iptables table per state (no root needed)."""

from __future__ import annotations

import pytest

from agentnode.chaos.faults import LinkFault, NetworkState, queue_number

ADDRESSES = tuple(f"10.77.1.{10 + i}" for i in range(4))


def state() -> NetworkState:
    return NetworkState(4, addresses=ADDRESSES)


def test_partition_blocks_both_directions_between_groups_only() -> None:
    s = state().partition([[0], [1, 2]])  # node 3 is in no group: a group of its own
    assert (0, 1) in s.blocked and (1, 0) in s.blocked and (3, 1) in s.blocked
    assert (1, 2) not in s.blocked and (2, 1) not in s.blocked
    rules = s.render_nft()
    assert 'iifname "p0" oifname "p1" counter drop' in rules
    assert 'iifname "p1" oifname "p2"' not in rules
    assert rules.startswith("table bridge chaos {}\ndelete table bridge chaos\n")  # atomic replace


def test_one_way_drops_one_direction() -> None:
    s = state().one_way([0], [1, 2])
    assert s.blocked == frozenset({(0, 1), (0, 2)})
    assert s.heal_partitions().blocked == frozenset()


def test_loss_and_duplication_rules_per_directed_link() -> None:
    s = state().link([0], [1], LinkFault(loss=0.1)).link([1], [0], LinkFault(duplicate=0.05))
    rules = s.render_nft()
    assert 'iifname "p0" oifname "p1" numgen random mod 1000 < 100 counter drop' in rules
    assert 'type filter hook ingress device "p1"' in rules
    assert 'ip daddr 10.77.1.10 numgen random mod 1000 < 50 counter dup to "p0"' in rules


def test_a_cut_link_gets_no_duplicates_that_would_bypass_the_cut() -> None:
    s = state().link([0], [1], LinkFault(duplicate=0.5)).partition([[0], [1, 2, 3]])
    assert "dup to" not in s.render_nft()


def test_delay_goes_to_the_shaper_through_nfqueue() -> None:
    s = state().link([0], [1, 2], LinkFault(delay_ms=50, jitter_ms=10, reorder=False))
    table = s.render_iptables()
    assert f"--physdev-in p0 --physdev-out p1 -j NFQUEUE --queue-num {queue_number(0, 1)} --queue-bypass" in table
    assert table.strip().endswith("COMMIT")
    assert s.shaper_links()[str(queue_number(0, 2))] == {"delay_ms": 50, "jitter_ms": 10, "loss": 0.0, "fifo": True}
    assert "NFQUEUE" not in s.clear_links().render_iptables()


def test_merging_link_faults_and_healing() -> None:
    s = state().link([0], [1], LinkFault(loss=0.1)).link([0], [1], LinkFault(delay_ms=20))
    assert dict(s.links)[(0, 1)] == LinkFault(loss=0.1, delay_ms=20)
    s = s.rate(2, 512).partition([[0], [1, 2, 3]])
    healed = s.healed()
    assert healed == NetworkState(4) and healed.addresses == ADDRESSES
    assert "drop" not in healed.render_nft()


@pytest.mark.parametrize("bad", [dict(loss=1.5), dict(duplicate=-0.1), dict(delay_ms=-1)])
def test_link_fault_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        LinkFault(**bad)


def test_node_index_checked() -> None:
    with pytest.raises(ValueError, match="outside 0..3"):
        state().partition([[0], [4]])
    with pytest.raises(ValueError, match="positive"):
        state().rate(0, 0)
