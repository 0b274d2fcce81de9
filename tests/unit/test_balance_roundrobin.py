"""Smooth weighted round-robin: exact shares, even spacing, fair through state changes."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from pylb.balance.roundrobin import RoundRobin, build_cycle
from tests.unit.conftest_balance import Srv, counts, names, servers


def test_2_1_1_spreads_as_A_B_A_C_repeated():
    bal = RoundRobin(servers(("A", 2), "B", "C"))
    assert names(bal, 12) == list("ABAC" * 3)


def test_other_weightings_interleave():
    assert "".join(names(RoundRobin(servers(("A", 5), "B", "C")), 7)) == "ABAAACA"
    assert "".join(names(RoundRobin(servers("A", "B", ("C", 2))), 4)) == "ACBC"
    assert "".join(names(RoundRobin(servers(("A", 3), ("B", 2), "C")), 6)) == "ABACBA"
    assert "".join(names(RoundRobin(servers("A", "B", "C")), 6)) == "ABCABC"


def test_400_picks_are_proportional():
    bal = RoundRobin(servers(("A", 2), "B", "C"))
    assert counts(bal, 400) == {"A": 200, "B": 100, "C": 100}


def test_weight_zero_gets_nothing():
    bal = RoundRobin(servers("A", ("Z", 0), "B"))
    assert counts(bal, 10) == {"A": 5, "B": 5}


def test_down_server_skipped_and_return_is_fair():
    a, b, c = servers("A", "B", "C")
    bal = RoundRobin([a, b, c])
    assert names(bal, 3) == ["A", "B", "C"]
    b.usable = False
    bal.update()
    assert counts(bal, 10) == {"A": 5, "C": 5}
    b.usable = True
    bal.update()
    # Back in its slot of the cycle: no burst for B, no reset favouring A.
    after = names(bal, 30)
    assert Counter(after) == {"A": 10, "B": 10, "C": 10}
    assert all(after[i] != after[i + 1] for i in range(len(after) - 1))


def test_flapping_server_does_not_favour_the_first_server():
    """A cycle reset on every change would give A a pick after each flap."""
    a, b, c = servers("A", "B", "C")
    bal = RoundRobin([a, b, c])
    got = Counter()
    for _ in range(30):
        got.update(names(bal, 1))
        c.usable = not c.usable
        bal.update()
    # With C absent half the time, A and B share evenly.
    assert abs(got["A"] - got["B"]) <= 1


def test_weight_change_through_update():
    a, b = servers("A", "B")
    bal = RoundRobin([a, b])
    assert counts(bal, 4) == {"A": 2, "B": 2}
    a.weight = 3
    bal.update()
    assert counts(bal, 400) == {"A": 300, "B": 100}
    a.weight = 0
    bal.update()
    assert counts(bal, 5) == {"B": 5}


def test_full_servers_passed_over_while_another_has_room():
    a, b = servers("A", "B")
    a.maxconn, a.cur_conns = 1, 1
    bal = RoundRobin([a, b])
    assert names(bal, 4) == ["B"] * 4
    b.maxconn, b.cur_conns = 1, 1
    assert bal.pick() in (a, b)  # all full: still a server (the data plane queues)


weights_st = st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=8).filter(
    lambda ws: sum(ws) > 0
)


@settings(max_examples=200, deadline=None)
@given(weights=weights_st)
def test_property_sum_of_weights_picks_give_each_exactly_its_weight(weights):
    srv = [Srv(f"s{i}", weight=w) for i, w in enumerate(weights)]
    bal = RoundRobin(srv)
    got = counts(bal, sum(weights))
    assert {s.name: got[s.name] for s in srv} == {s.name: s.weight for s in srv}


@settings(max_examples=100, deadline=None)
@given(weights=weights_st, start=st.integers(min_value=0, max_value=200))
def test_property_any_window_of_W_picks_is_exact(weights, start):
    srv = [Srv(f"s{i}", weight=w) for i, w in enumerate(weights)]
    bal = RoundRobin(srv)
    total = sum(weights)
    names(bal, start)
    got = counts(bal, total)
    assert all(got[s.name] == s.weight for s in srv)


@settings(max_examples=100, deadline=None)
@given(weights=weights_st)
def test_property_spacing_is_near_ideal(weights):
    """No server waits more than about twice its ideal gap W/w between two picks."""
    slots = build_cycle(weights)
    total = sum(weights)
    seq = [i for _, i in slots]
    for i, w in enumerate(weights):
        if w == 0:
            continue
        pos = [p for p, x in enumerate(seq) if x == i]
        pos += [p + total for p in pos]
        gap = max(b - a for a, b in pairwise(pos))
        assert gap <= 2 * total / w + 1
