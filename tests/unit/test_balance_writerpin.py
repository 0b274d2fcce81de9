"""writer-pin: one writer, sticky, ordered by priority then configuration."""

from __future__ import annotations

from pylb.balance.registry import make_balancer
from pylb.balance.writerpin import WriterPin
from tests.unit.conftest_balance import names, servers


def test_all_sessions_to_the_first_server():
    srv = servers("A", "B", "C")
    bal = WriterPin(srv)
    assert bal.writer is srv[0]
    assert names(bal, 5) == ["A"] * 5


def test_priority_orders_before_configured_order():
    a, b, c = servers("A", "B", "C")
    c.priority, b.priority = 1, 2  # A unset: after those with a priority
    bal = WriterPin([a, b, c])
    assert bal.writer is c
    c.usable = False
    bal.update()
    assert bal.writer is b


def test_priority_read_from_server_conf():
    class Conf:
        def __init__(self, priority):
            self.priority = priority
            self.maxconn = None

    a, b = servers("A", "B")
    a.priority = None
    b.conf = Conf(0)  # what pylb.proxy.backend.Server carries
    assert WriterPin([a, b]).writer is b


def test_sticky_no_failback():
    a, b, c = servers("A", "B", "C")
    bal = WriterPin([a, b, c])
    a.usable = False
    bal.update()
    assert bal.writer is b
    a.usable = True
    bal.update()
    assert bal.writer is b  # A is back but B keeps the role
    assert names(bal, 3) == ["B"] * 3
    b.usable = False
    bal.update()
    assert bal.writer is a


def test_failback_returns_to_the_first():
    a, b = servers("A", "B")
    bal = make_balancer("writer-pin", [a, b], failback=True)
    a.usable = False
    bal.update()
    assert bal.writer is b
    a.usable = True
    bal.update()
    assert bal.writer is a


def test_writer_lost_without_update_is_replaced_at_pick():
    a, b = servers("A", "B")
    bal = WriterPin([a, b])
    a.usable = False
    assert bal.pick() is b
    assert bal.writer is b


def test_avoid_diverts_one_session_but_keeps_the_writer():
    a, b, c = servers("A", "B", "C")
    bal = WriterPin([a, b, c])
    assert bal.pick(avoid=[a]) is b
    assert bal.writer is a
    assert bal.pick() is a


def test_no_usable_server_no_writer():
    a, b = servers("A", "B")
    bal = WriterPin([a, b])
    a.usable = b.usable = False
    bal.update()
    assert bal.writer is None
    assert bal.pick() is None
    b.usable = True
    bal.update()
    assert bal.writer is b


def test_backup_writer_by_priority_then_back_to_actives():
    (a,) = servers("A")
    k1, k2 = servers("K1", "K2", backup=True)
    k2.priority = 1
    bal = WriterPin([a, k1, k2])
    a.usable = False
    bal.update()
    assert bal.writer is k2
    a.usable = True
    bal.update()
    assert bal.writer is a  # backups only serve while no active server is usable
