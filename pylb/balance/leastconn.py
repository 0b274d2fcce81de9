"""Least connections, weighted, with round-robin among equals (HAProxy `balance leastconn`).

The load of a server is (cur_conns + 1) / weight: the "+1" is HAProxy's (lb_fwlc.c keys
servers by (served + 1) / eweight), and it is what makes weights matter when servers are
idle: between two idle servers of weight 2 and 1 the heavier one is the better place for
the next session, while plain cur/weight would call them equal.

Ties go round-robin: the scan starts after the server chosen last, and only a strictly
lower load displaces the first candidate, so equal servers alternate (HAProxy requeues a
server behind its equals when it takes a connection, to the same effect). Long sessions
(AMQP, Galera) are where this algorithm is used, and there alternating keeps a burst of
new connections from all landing on the first server in the list.

Servers at their maxconn are passed over while another has a free slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from pylb.balance.base import Balancer, Candidate, slot_probe


class LeastConn(Balancer):
    """`balance leastconn`: fewest sessions relative to weight; O(servers) per pick."""

    name: ClassVar[str] = "leastconn"

    __slots__ = ("_next", "_probes")

    def __init__(self, servers: Sequence[Candidate], *, allbackups: bool = False) -> None:
        self._next = 0  # group index where the next scan starts
        self._probes: list[Callable[[], bool] | None] = []
        super().__init__(servers, allbackups=allbackups)

    def _group_changed(self) -> None:
        self._probes = [slot_probe(s) for s in self._group]
        if self._next >= len(self._group):
            self._next = 0

    def _select(self, key: bytes | None, skip: frozenset[int] | None) -> Candidate | None:
        group = self._group
        probes = self._probes
        n = len(group)
        start = self._next
        best = -1
        best_num = best_den = 0
        full = -1
        full_num = full_den = 0
        for off in range(n):
            i = start + off
            if i >= n:
                i -= n
            s = group[i]
            if skip is not None and id(s) in skip:
                continue
            num = s.cur_conns + 1
            den = s.weight
            probe = probes[i]
            if probe is not None and not probe():
                # Compare loads by cross-multiplying: exact, no floats.
                if full < 0 or num * full_den < full_num * den:
                    full, full_num, full_den = i, num, den
                continue
            if best < 0 or num * best_den < best_num * den:
                best, best_num, best_den = i, num, den
        if best < 0:
            best = full  # all at maxconn: the least loaded anyway; the data plane queues
            if best < 0:
                return None
        self._next = best + 1 if best + 1 < n else 0
        return group[best]
