"""`balance writer-pin`: every session goes to ONE server, the writer (Galera).

Galera accepts writes on every node, but concurrent writes to the same rows on two nodes
end in certification failures (deadlock errors) for the clients, so MCP sends all MySQL
traffic to one node at a time. This class is the pure decision core (no I/O, no clock);
`pylb.galera.writer.WriterController` applies its decisions (closes the old writer's
sessions, logs, syncs with peer proxies).

- Order of preference: servers with `conf.priority` set, lowest first, then those without,
  in configured order. (A candidate may also carry `priority` directly.)
- The writer is the first eligible server in that order, chosen when there is none yet
  or when the current one stops being eligible (down, maintenance, drain, weight 0).
- Sticky: with `failback=False` (the default, and MCP's choice) a better server coming
  back does NOT take the role back: moving the writer while sessions are open on the old
  one is exactly the two-writer window to avoid. With `failback=True`, when a server
  preferred over the current writer *becomes* eligible (an up transition: the health
  checks have seen it pass `rise` checks in a row), the writer moves to the first eligible
  server in order. It is an event, not a standing rule, so a manual switch (`set_writer`)
  holds until the writer fails or a preferred server comes back up.
- Backups follow the common rule (used only when no active server is eligible), and
  without `allbackups` the backup chosen is the first one by the same order.
- `avoid` (a failed connect, retried) sends THIS session to the next server in order but
  does not move the writer. For writer-pin backends with active checks, a failed connect
  marks the server down at once (passive observation, `on-error mark-down`), so by the
  time the session is redispatched the writer has already moved and `avoid` is moot.
- Every change of writer goes through `_set()`: it bumps `epoch` and calls `on_change(old,
  new, reason)`, the one place where sessions to the old writer are closed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

from pylb.balance.base import Balancer, Candidate

# Why the writer changed (passed to `on_change`, shown by `show writer`).
START = "start"  # first election, or the first server back after none was left
DOWN = "down"  # the writer stopped being eligible
FAILBACK = "failback"  # a preferred server came back (failback: true)
MANUAL = "manual"  # an operator's `set writer`
PEER = "peer"  # adopted from another proxy node (pylb.galera.peers)
ACTIVE_BACK = "active-back"  # a backup was the writer; an active server is usable again
NONE = "none"  # no eligible server left

ChangeHook = Callable[[Candidate | None, Candidate | None, str], None]


def priority_of(server: Candidate) -> float:
    """The configured writer priority (lower is preferred); +inf when unset."""
    prio = getattr(server, "priority", None)
    if prio is None:
        prio = getattr(getattr(server, "conf", None), "priority", None)
    return math.inf if prio is None else float(prio)


def preference_order(servers: Sequence[Candidate]) -> list[Candidate]:
    """`servers` sorted by writer preference: priority, then their order in `servers`.
    Depends on the config only, so every proxy node with the same config agrees."""
    return [s for _, s in sorted(enumerate(servers), key=lambda p: (priority_of(p[1]), p[0]))]


class WriterPin(Balancer):
    """One writer at a time, kept while it is usable (no automatic failback by default)."""

    name: ClassVar[str] = "writer-pin"
    options: ClassVar[frozenset[str]] = frozenset({"failback"})

    __slots__ = ("_order", "_rank", "_seen", "_writer", "epoch", "failback", "on_change", "reason")

    def __init__(
        self, servers: Sequence[Candidate], *, allbackups: bool = False, failback: bool = False
    ) -> None:
        self.failback = failback
        self._writer: Candidate | None = None
        self._order: list[Candidate] = []
        self._seen: frozenset[int] = frozenset()  # group ids at the previous election
        self.epoch = 0  # number of writer changes so far (START included)
        self.reason = NONE  # why the current writer is the writer
        self.on_change: ChangeHook | None = None
        self._rank = {id(s): i for i, s in enumerate(preference_order(servers))}
        super().__init__(servers, allbackups=allbackups)

    @property
    def writer(self) -> Candidate | None:
        """The server taking all sessions now, or None when no server is usable."""
        return self._writer

    def rank(self, server: Candidate) -> int:
        """Position of `server` in the preference order (0 = preferred)."""
        return self._rank[id(server)]

    def _backup_order(self, backups: list[Candidate]) -> list[Candidate]:
        return sorted(backups, key=self.rank)

    def _group_changed(self) -> None:
        self._order = sorted(self._group, key=self.rank)
        self._elect()

    def _weights_changed(self) -> None:
        self._elect()

    def _elect(self) -> None:
        order = self._order
        added = self._group_ids - self._seen
        self._seen = self._group_ids
        cur = self._writer
        if not order:
            if cur is not None:
                self._set(None, NONE)
            return
        if cur is None:
            self._set(order[0], START)
        elif id(cur) not in self._group_ids:
            # Not eligible any more, or a backup writer replaced by an active server back.
            self._set(order[0], DOWN if not self.eligible(cur) else ACTIVE_BACK)
        elif self.failback and added:
            rank = self.rank(cur)
            if any(self.rank(s) < rank for s in order if id(s) in added):
                self._set(order[0], FAILBACK)

    def _set(self, new: Candidate | None, reason: str) -> None:
        old = self._writer
        if new is old:
            return
        self._writer = new
        self.reason = reason
        self.epoch += 1
        hook = self.on_change
        if hook is not None:
            hook(old, new, reason)

    # -- moves decided outside (operator, peer proxies) ---------------------------------

    def can_write(self, server: Candidate) -> bool:
        """May `server` be made the writer now (it is in the group pick() uses)?"""
        return id(server) in self._group_ids

    def set_writer(self, server: Candidate, reason: str = MANUAL) -> bool:
        """Make `server` the writer (manual switch, or a peer's choice). Refused (False)
        when it is not eligible now; True when it is the writer afterwards."""
        if not self.can_write(server):
            return False
        self._set(server, reason)
        return True

    def _select(self, key: bytes | None, skip: frozenset[int] | None) -> Candidate | None:
        w = self._writer
        if skip is None or (w is not None and id(w) not in skip):
            return w
        for s in self._order:
            if id(s) not in skip:
                return s
        return None
