"""source: weighted rendezvous hashing on the client address."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pylb.balance.source import Source, hrw_score
from tests.unit.conftest_balance import Srv, servers

KEYS = [ipaddress.ip_address(0x0A000000 + i * 7919).packed for i in range(3000)]


def mapping(bal: Source) -> dict[bytes, str]:
    return {k: bal.pick(k).name for k in KEYS}


def test_same_client_same_server():
    bal = Source(servers("A", "B", "C"))
    first = mapping(bal)
    assert mapping(bal) == first


def test_removing_a_server_remaps_only_its_own_clients():
    srv = servers("A", "B", "C")
    bal = Source(srv)
    before = mapping(bal)
    srv[1].usable = False
    bal.update()
    after = mapping(bal)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "B"}
    assert "B" not in after.values()
    srv[1].usable = True
    bal.update()
    assert mapping(bal) == before  # it takes back exactly its clients


def test_adding_a_server_takes_only_from_others_proportionally():
    srv = servers("A", "B", "C", "D")
    three = Source(srv[:3])
    four = Source(srv)
    before, after = mapping(three), mapping(four)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "D" for k in moved)
    assert 600 < len(moved) < 900  # about a quarter of 3000


def test_distribution_roughly_proportional_to_weight():
    got = Counter(mapping(Source(servers("A", "B", "C"))).values())
    assert all(850 < got[n] < 1150 for n in "ABC"), got
    got = Counter(mapping(Source(servers(("A", 2), "B", "C"))).values())
    assert 1350 < got["A"] < 1650 and all(600 < got[n] < 900 for n in "BC"), got


def test_independent_of_configured_order():
    """Two proxy nodes listing the servers differently send a client to the same server."""
    a, b, c = servers("A", "B", "C")
    assert mapping(Source([a, b, c])) == mapping(Source([c, a, b]))


def test_deterministic_across_processes():
    """No salted hash(): another interpreter with another PYTHONHASHSEED agrees."""
    code = (
        "from pylb.balance.source import hrw_score;"
        "print(repr(hrw_score('192.0.2.11:3306', 3, bytes([10, 0, 0, 1]))))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert float(out) == hrw_score("192.0.2.11:3306", 3, bytes([10, 0, 0, 1]))


def test_avoid_gives_the_next_best_score_on_every_node():
    a, b, c = servers("A", "B", "C")
    key = KEYS[0]
    order = sorted((a, b, c), key=lambda s: hrw_score(s.key, s.weight, key), reverse=True)
    bal = Source([a, b, c])
    assert bal.pick(key) is order[0]
    assert bal.pick(key, avoid=[order[0]]) is order[1]
    assert Source([c, b, a]).pick(key, avoid=[order[0]]) is order[1]


def test_no_key_falls_back_to_round_robin():
    bal = Source(servers("A", "B", "C"))
    assert [bal.pick(None).name for _ in range(6)] == list("ABCABC")


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(1, 10), min_size=2, max_size=6),
    gone=st.integers(0, 5),
)
def test_property_leaving_server_moves_only_its_clients(weights, gone):
    srv = [Srv(f"s{i}", key=f"198.51.100.{i + 1}:3306", weight=w) for i, w in enumerate(weights)]
    gone %= len(srv)
    bal = Source(srv)
    keys = KEYS[:300]
    before = {k: bal.pick(k) for k in keys}
    srv[gone].usable = False
    bal.update()
    for k in keys:
        if before[k] is not srv[gone]:
            assert bal.pick(k) is before[k]
