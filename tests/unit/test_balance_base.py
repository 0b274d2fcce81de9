"""Behaviour common to every algorithm: groups, backups, disabled servers, avoid, registry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylb.balance.base import Balancer
from pylb.balance.registry import BALANCERS, balancer_class, make_balancer
from tests.unit.conftest_balance import Srv, counts, names, servers

ALL = sorted(BALANCERS)


def test_registry_names_and_needs():
    assert set(BALANCERS) == {"roundrobin", "leastconn", "source", "first", "writer-pin"}
    assert balancer_class("source").needs == frozenset({"client_addr"})
    assert balancer_class("roundrobin").needs == frozenset()
    for name, cls in BALANCERS.items():
        assert cls.name == name
        assert issubclass(cls, Balancer)


def test_registry_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"unknown balance algorithm 'rr' \(known: first, "):
        make_balancer("rr", servers("A"))


def test_registry_options_go_only_where_understood():
    a, b = servers("A", "B")
    wp = make_balancer("writer-pin", [a, b], failback=True)
    assert wp.failback is True
    rr = make_balancer("roundrobin", [a, b], failback=True)  # accepted, ignored
    assert rr.pick() is a
    with pytest.raises(TypeError, match="unknown balancer option"):
        make_balancer("roundrobin", [a, b], nonsense=1)


@pytest.mark.parametrize("algo", ALL)
def test_nothing_usable_gives_none(algo):
    srv = servers("A", "B")
    for s in srv:
        s.usable = False
    bal = make_balancer(algo, srv)
    assert bal.pick(b"\x7f\x00\x00\x01") is None
    assert make_balancer(algo, []).pick(b"k") is None


@pytest.mark.parametrize("algo", ALL)
def test_disabled_and_weight_zero_skipped(algo):
    a, b, c = servers("A", "B", "C")
    a.usable = False  # disabled / maintenance / down
    c.weight = 0  # drained by weight
    bal = make_balancer(algo, [a, b, c])
    assert {bal.pick(bytes([i])).name for i in range(50)} == {"B"}


@pytest.mark.parametrize("algo", ALL)
def test_backup_only_when_all_actives_down(algo):
    a, b = servers("A", "B")
    bk1, bk2 = servers("K1", "K2", backup=True)
    bal = make_balancer(algo, [bk1, a, bk2, b])
    assert {bal.pick(bytes([i])).name for i in range(40)} <= {"A", "B"}
    assert not bal.using_backups
    a.usable = False
    bal.update()
    assert {bal.pick(bytes([i])).name for i in range(40)} == {"B"}
    b.usable = False
    bal.update()
    # Default: only the FIRST usable backup in configured order takes traffic.
    assert {bal.pick(bytes([i])).name for i in range(40)} == {"K1"}
    assert bal.using_backups
    bk1.usable = False
    bal.update()
    assert {bal.pick(bytes([i])).name for i in range(40)} == {"K2"}
    bk1.usable = True
    a.usable = True
    bal.update()
    assert {bal.pick(bytes([i])).name for i in range(40)} == {"A"}
    assert not bal.using_backups


def test_allbackups_spreads_over_all_backups():
    a = Srv("A")
    bk1, bk2 = servers("K1", "K2", backup=True)
    a.usable = False
    first_only = make_balancer("roundrobin", [a, bk1, bk2])
    assert counts(first_only, 10) == {"K1": 10}
    spread = make_balancer("roundrobin", [a, bk1, bk2], allbackups=True)
    assert counts(spread, 10) == {"K1": 5, "K2": 5}
    assert spread.group == (bk1, bk2)


@pytest.mark.parametrize("algo", ALL)
def test_avoid_skips_but_never_leaves_the_client_without_server(algo):
    a, b, c = servers("A", "B", "C")
    bal = make_balancer(algo, [a, b, c])
    key = b"\xc0\x00\x02\x07"
    first = bal.pick(key)
    retry = bal.pick(key, avoid=(first,))
    assert retry is not None and retry is not first
    third = bal.pick(key, avoid=(first, retry))
    assert third not in (first, retry)
    # Every usable server avoided: one of them anyway (better than a 503).
    assert bal.pick(key, avoid=(a, b, c)) in (a, b, c)


@pytest.mark.parametrize("algo", ALL)
def test_avoid_of_the_only_server_returns_it(algo):
    (a,) = servers("A")
    bal = make_balancer(algo, [a])
    assert bal.pick(b"k", avoid=[a]) is a


@pytest.mark.parametrize("algo", ALL)
def test_server_down_without_update_is_not_picked(algo):
    """A forgotten update() must not send sessions to a dead server."""
    a, b = servers("A", "B")
    bal = make_balancer(algo, [a, b])
    a.usable = False
    assert {bal.pick(bytes([i])).name for i in range(20)} == {"B"}
    b.usable = False
    assert bal.pick(b"x") is None


def test_update_is_idempotent():
    srv = servers(("A", 2), "B", "C")
    bal = make_balancer("roundrobin", srv)
    seq = []
    for _ in range(8):
        bal.update()
        seq.append(bal.pick().name)
    assert seq == list("ABACABAC")


def test_repr_names_group():
    a, b = servers("A", "B")
    bal = make_balancer("leastconn", [a, b])
    assert repr(bal) == "<LeastConn [A,B]>"
    assert names(bal, 2) == ["A", "B"]


@settings(max_examples=150, deadline=None)
@given(
    algo=st.sampled_from(ALL),
    spec=st.lists(
        st.tuples(st.booleans(), st.booleans(), st.integers(0, 3), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    key=st.binary(min_size=4, max_size=16),
    allbackups=st.booleans(),
)
def test_property_pick_respects_groups_and_avoid(algo, spec, key, allbackups):
    """Whatever the states: the pick is eligible, from the right group, and avoided only
    when the whole group is avoided."""
    srv = [
        Srv(f"s{i}", key=f"192.0.2.{i + 1}:80", usable=up, backup=bk, weight=w)
        for i, (up, bk, w, _) in enumerate(spec)
    ]
    avoid = [s for s, (*_, av) in zip(srv, spec, strict=True) if av]
    bal = make_balancer(algo, srv, allbackups=allbackups)
    got = bal.pick(key, avoid=avoid)
    eligible = [s for s in srv if s.usable and s.weight > 0]
    actives = [s for s in eligible if not s.backup]
    group = actives or [s for s in eligible if s.backup]
    if group and not actives and not allbackups:
        group = group[:1]  # the first backup in configured order (no priorities here)
    if not group:
        assert got is None
        return
    assert got in group
    if any(s not in avoid for s in group):
        assert got not in avoid
