"""first: fill servers in configured order up to their maxconn."""

from __future__ import annotations

from pylb.balance.first import First
from tests.unit.conftest_balance import names, servers


def test_first_server_takes_all_without_maxconn():
    bal = First(servers("A", "B", "C"))
    assert names(bal, 5) == ["A"] * 5


def test_fills_in_order():
    srv = servers("A", "B", "C")
    for s in srv:
        s.maxconn = 2
    bal = First(srv)
    got = []
    for _ in range(6):
        s = bal.pick()
        s.cur_conns += 1
        got.append(s.name)
    assert got == list("AABBCC")
    srv[0].cur_conns -= 1  # a session on A ends: A has room again
    assert bal.pick() is srv[0]


def test_all_full_returns_the_first_usable():
    srv = servers("A", "B")
    for s in srv:
        s.maxconn, s.cur_conns = 1, 1
    srv[0].usable = False
    bal = First(srv)
    assert bal.pick() is srv[1]


def test_down_and_avoided_skipped():
    a, b, c = servers("A", "B", "C")
    a.usable = False
    bal = First([a, b, c])
    assert bal.pick() is b
    assert bal.pick(avoid=[b]) is c
