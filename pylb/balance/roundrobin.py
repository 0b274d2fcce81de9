"""Smooth weighted round-robin.

Why not nginx's "smooth weighted round-robin" loop as is: started from zero it gives
A B C A for weights 2:1:1, so the cycle repeats as ...C A A B C A A..., two A in a row.
The goal (issue 2) is the spread A B A C: every server's picks as evenly spaced as its
weight allows, and servers of equal weight out of phase with each other.

How: each server i of weight w gets w slots per cycle of W = sum(weights) picks, at the
virtual times (k + phase_i) / w for k = 0..w-1, in [0, 1). `phase_i` staggers servers of the
same weight: the j-th of m servers weighing w gets phase (2j + 1) / 2m. Sorting all slots by
(time, configured position) gives the cycle, built once per group change (O(W log W) with
W <= 256 * servers), so a pick is one list step. By construction every window of W
consecutive picks gives each server exactly its weight, and 2:1:1 gives A B A C.

Fair through changes: phases are computed over every configured server of the group's
kind (active or backup), up or down, so a server going down or coming back deletes or
re-inserts its own slots and moves nobody else's; and after a rebuild the next pick is the
first slot later than the last one served. A flapping server therefore neither resets the
cycle to its start (which would favour the first servers) nor lets anyone skip ahead.
Only a weight change re-phases the servers of the old and new weight.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import ClassVar

from pylb.balance.base import Balancer, Candidate, slot_probe


def phases(weights: Sequence[int]) -> list[Fraction]:
    """Per-server phase in [0, 1): the j-th of the m servers of equal weight gets
    (2j + 1) / 2m, so servers of the same weight take turns at evenly spread times."""
    seen: dict[int, int] = {}
    for w in weights:
        seen[w] = seen.get(w, 0) + 1
    rank: dict[int, int] = {}
    out = []
    for w in weights:
        j = rank.get(w, 0)
        rank[w] = j + 1
        out.append(Fraction(2 * j + 1, 2 * seen[w]))
    return out


def build_cycle(
    weights: Sequence[int], phase: Sequence[Fraction] | None = None
) -> list[tuple[Fraction, int]]:
    """The cycle as sorted (virtual time, index) slots; pure, for tests too.

    `phase` defaults to `phases(weights)`. Servers with weight <= 0 get no slot.
    """
    if phase is None:
        phase = phases(weights)
    slots: list[tuple[Fraction, int]] = []
    for i, w in enumerate(weights):
        if w > 0:
            p = phase[i]
            slots.extend(((k + p) / w, i) for k in range(w))
    slots.sort()
    return slots


class RoundRobin(Balancer):
    """`balance roundrobin`: weighted, smoothly interleaved, dynamic weights."""

    name: ClassVar[str] = "roundrobin"

    __slots__ = ("_cycle", "_pos", "_times", "_vt", "_weights")

    def __init__(self, servers: Sequence[Candidate], *, allbackups: bool = False) -> None:
        self._cycle: list[tuple[Candidate, Callable[[], bool] | None]] = []
        self._times: list[Fraction] = []
        self._weights: list[int] = []
        self._pos = 0  # index in _cycle of the next slot to serve
        self._vt: Fraction = Fraction(-1)  # virtual time of the last slot served
        super().__init__(servers, allbackups=allbackups)

    def _group_changed(self) -> None:
        self._rebuild()

    def _weights_changed(self) -> None:
        if [s.weight for s in self._group] != self._weights:
            self._rebuild()

    def _rebuild(self) -> None:
        group = self._group
        self._weights = [s.weight for s in group]
        # Phases over all configured servers of this kind, so they don't depend on who is up.
        kind = self.using_backups
        pool = [s for s in self.servers if s.backup == kind]
        by_id = dict(zip((id(s) for s in pool), phases([s.weight for s in pool]), strict=True))
        slots = build_cycle(self._weights, [by_id[id(s)] for s in group])
        probes = [slot_probe(s) for s in group]
        self._cycle = [(group[i], probes[i]) for _, i in slots]
        self._times = [t for t, _ in slots]
        # Resume after the last served virtual time (wrapping to the cycle's start).
        pos = bisect_right(self._times, self._vt) if self._vt >= 0 else 0
        self._pos = pos if pos < len(self._cycle) else 0

    def _select(self, key: bytes | None, skip: frozenset[int] | None) -> Candidate | None:
        cycle = self._cycle
        n = len(cycle)
        pos = self._pos
        full: int = -1  # first slot skipped only because its server was at maxconn
        for _ in range(n):
            server, probe = cycle[pos]
            here = pos
            pos += 1
            if pos == n:
                pos = 0
            if skip is not None and id(server) in skip:
                continue
            if probe is not None and not probe():
                if full < 0:
                    full = here
                continue
            self._pos = pos
            self._vt = self._times[here]
            return server
        if full < 0:  # the weight-0 servers of an all-zero group are filtered by update()
            return None
        # Every candidate is at maxconn: pick the next one in turn anyway and let the data
        # plane's maxconn/queue logic decide (HAProxy would queue the request).
        self._pos = full + 1 if full + 1 < n else 0
        self._vt = self._times[full]
        return cycle[full][0]
