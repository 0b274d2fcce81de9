"""`balance writer-pin`: every session goes to ONE server, the writer (Galera).

Galera accepts writes on every node, but concurrent writes to the same rows on two nodes
end in certification failures (deadlock errors) for the clients, so MCP sends all MySQL
traffic to one node at a time. Rules of this first version (issue "Galera" extends it):

- Order of preference: servers with `conf.priority` set, lowest first, then those without,
  in configured order. (A candidate may also carry `priority` directly.)
- The writer is the first eligible server in that order, chosen when there is none yet
  or when the current one stops being eligible (down, maintenance, drain, weight 0).
- Sticky: with `failback=False` (the default, and MCP's choice) a better server coming
  back does NOT take the role back: moving the writer while sessions are open on the old
  one is exactly the two-writer window to avoid. `failback=True` always returns to the
  first server in order once it is eligible again.
- Backups follow the common rule (used only when no active server is eligible), and
  without `allbackups` the backup chosen is the first one by the same order.
- `avoid` (a failed connect, retried) sends THIS session to the next server in order but
  does not move the writer: one failed connect is not a verdict on the node; the health
  checks decide, and `update()` then elects the next writer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from pylb.balance.base import Balancer, Candidate


def priority_of(server: Candidate) -> float:
    """The configured writer priority (lower is preferred); +inf when unset."""
    prio = getattr(server, "priority", None)
    if prio is None:
        prio = getattr(getattr(server, "conf", None), "priority", None)
    return math.inf if prio is None else float(prio)


class WriterPin(Balancer):
    """One writer at a time, kept while it is usable (no automatic failback by default)."""

    name: ClassVar[str] = "writer-pin"
    options: ClassVar[frozenset[str]] = frozenset({"failback"})

    __slots__ = ("_order", "_writer", "failback")

    def __init__(
        self, servers: Sequence[Candidate], *, allbackups: bool = False, failback: bool = False
    ) -> None:
        self.failback = failback
        self._writer: Candidate | None = None
        self._order: list[Candidate] = []
        super().__init__(servers, allbackups=allbackups)

    @property
    def writer(self) -> Candidate | None:
        """The server taking all sessions now, or None when no server is usable."""
        return self._writer

    def _preference(self, servers: list[Candidate]) -> list[Candidate]:
        pos = {id(s): i for i, s in enumerate(self.servers)}
        return sorted(servers, key=lambda s: (priority_of(s), pos[id(s)]))

    def _backup_order(self, backups: list[Candidate]) -> list[Candidate]:
        return self._preference(backups)

    def _group_changed(self) -> None:
        self._order = self._preference(self._group)
        self._elect()

    def _weights_changed(self) -> None:
        self._elect()

    def _elect(self) -> None:
        order = self._order
        if not order:
            self._writer = None
        elif self.failback or self._writer is None or id(self._writer) not in self._group_ids:
            self._writer = order[0]

    def _select(self, key: bytes | None, skip: frozenset[int] | None) -> Candidate | None:
        w = self._writer
        if skip is None or (w is not None and id(w) not in skip):
            return w
        for s in self._order:
            if id(s) not in skip:
                return s
        return None
