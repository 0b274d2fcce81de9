"""leastconn: fewest sessions relative to weight; equals alternate."""

from __future__ import annotations

from pylb.balance.leastconn import LeastConn
from tests.unit.conftest_balance import names, servers


def test_fewest_connections_wins():
    a, b, c = servers("A", "B", "C")
    a.cur_conns, b.cur_conns, c.cur_conns = 5, 2, 7
    bal = LeastConn([a, b, c])
    assert bal.pick() is b


def test_equal_servers_alternate():
    bal = LeastConn(servers("A", "B", "C"))
    assert names(bal, 7) == list("ABCABCA")


def test_ties_alternate_among_the_least_loaded_only():
    a, b, c = servers("A", "B", "C")
    b.cur_conns = 3
    bal = LeastConn([a, b, c])
    assert names(bal, 4) == list("ACAC")


def test_sessions_taken_spread_evenly():
    """Simulating take(): each pick adds a session; 30 sessions end up 10/10/10."""
    srv = servers("A", "B", "C")
    bal = LeastConn(srv)
    for _ in range(30):
        s = bal.pick()
        s.cur_conns += 1
    assert [s.cur_conns for s in srv] == [10, 10, 10]


def test_load_is_relative_to_weight():
    a, b = servers(("A", 3), "B")
    bal = LeastConn([a, b])
    for _ in range(40):
        bal.pick().cur_conns += 1
    assert (a.cur_conns, b.cur_conns) == (30, 10)


def test_idle_heavier_server_preferred():
    """(cur + 1) / weight: between idle servers the heavier one is the better place."""
    a, b = servers("A", ("B", 2))
    assert LeastConn([a, b]).pick() is b


def test_session_end_makes_server_preferred_again():
    a, b = servers("A", "B")
    a.cur_conns = b.cur_conns = 4
    bal = LeastConn([a, b])
    b.cur_conns -= 1  # a session on B ended
    assert names(bal, 1) == ["B"]


def test_full_server_skipped_while_another_has_room():
    a, b = servers("A", "B")
    a.maxconn = 2
    bal = LeastConn([a, b])
    b.cur_conns = 5
    assert bal.pick() is a
    a.cur_conns = 2  # A full now: B despite more sessions
    assert bal.pick() is b
    b.maxconn = 5
    assert bal.pick() is a  # both full: the least loaded one anyway


def test_avoid_gives_the_next_least_loaded():
    a, b, c = servers("A", "B", "C")
    a.cur_conns, b.cur_conns, c.cur_conns = 0, 1, 2
    bal = LeastConn([a, b, c])
    assert bal.pick(avoid=[a]) is b
    assert bal.pick(avoid=[a, b]) is c
