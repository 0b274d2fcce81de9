"""The contract between the data plane and a load-balancing algorithm.

Modelled on HAProxy's `struct lb_ops`: an algorithm sees servers only through the small
`Candidate` protocol, is told when eligibility changes (`update()`), and answers `pick()`.
It never does I/O and never reads the clock, so every algorithm is unit-tested with plain
objects. Backup servers are handled here once, not in every algorithm: they are a separate
group used only while no active server is usable.

Eligibility (computed by `update()`): a server takes new traffic when it is `usable`
(operationally up and administratively ready) and its weight is above 0. The *group* an
algorithm chooses from is:

- every eligible active (non-backup) server, in configured order, if there is one;
- otherwise the eligible backup servers: only the FIRST one in configured order by
  default, all of them with `allbackups` (HAProxy's `option allbackups`);
- otherwise nothing: `pick()` returns None (HAProxy's NOSRV, answered 503).

`avoid` (retry / redispatch after a failed connect) is a soft preference: the avoided
servers are skipped, but when every server of the group is avoided one of them is returned
anyway, because trying a server that just failed is better than answering 503 at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import ClassVar, Protocol


class Candidate(Protocol):
    """What a balancer may know of a server (pylb.proxy.backend.Server implements it)."""

    name: str
    key: str  # "ip:port": identical on every proxy node, so hashing agrees across nodes
    weight: int  # effective weight, 0..256; 0 takes no new traffic
    backup: bool
    cur_conns: int  # sessions in progress, for leastconn

    @property
    def usable(self) -> bool:  # operationally up and administratively ready
        ...


def slot_probe(server: Candidate) -> Callable[[], bool] | None:
    """The server's `has_slot()` (room left under its maxconn), or None when there is no
    limit to check: looked up once per `update()`, so a pick calls nothing for servers
    without `maxconn` (the common case) or for plain test objects without `has_slot`."""
    conf = getattr(server, "conf", None)
    if conf is not None and getattr(conf, "maxconn", 0) is None:
        return None
    return getattr(server, "has_slot", None)


class Balancer:
    """Base class: keeps the active and backup groups; subclasses choose within a group.

    `update()` must be called after any change of a server's `usable` or `weight`; it is
    idempotent and cheap. `pick()` returns None when no server is usable (NOSRV).
    `avoid` names servers that just failed for this request (retry/redispatch); they are
    chosen only when nothing else is usable.

    Subclasses implement `_select(key, skip)` over `self._group` and may override
    `_group_changed()` to rebuild their own state. Loop thread only: no locking.
    """

    name: ClassVar[str] = ""
    # Inputs the algorithm needs from a request, checked at config load ("source" needs a
    # client address key; HAProxy's BE_LB_NEED_* bits).
    needs: ClassVar[frozenset[str]] = frozenset()
    # Extra keyword options the constructor takes (registry passes only these).
    options: ClassVar[frozenset[str]] = frozenset()

    __slots__ = ("_group", "_group_ids", "_using_backups", "allbackups", "servers")

    def __init__(self, servers: Sequence[Candidate], *, allbackups: bool = False) -> None:
        self.servers: tuple[Candidate, ...] = tuple(servers)
        self.allbackups = allbackups
        self._group: list[Candidate] = []
        self._group_ids: frozenset[int] = frozenset()
        self._using_backups = False
        self.update()

    # -- group bookkeeping ------------------------------------------------------------

    @staticmethod
    def eligible(server: Candidate) -> bool:
        """May the balancer send a new session to `server` at all?"""
        return server.weight > 0 and server.usable

    def update(self) -> None:
        """Recompute the group after a state or weight change. Idempotent."""
        group = [s for s in self.servers if not s.backup and self.eligible(s)]
        backups = False
        if not group:
            group = [s for s in self.servers if s.backup and self.eligible(s)]
            backups = bool(group)
            if group and not self.allbackups:
                group = self._backup_order(group)[:1]
        changed = [id(s) for s in group] != [id(s) for s in self._group]
        self._group = group
        self._group_ids = frozenset(id(s) for s in group)
        self._using_backups = backups
        if changed:
            self._group_changed()
        else:
            self._weights_changed()

    def _backup_order(self, backups: list[Candidate]) -> list[Candidate]:
        """Order in which backups are preferred when only one is used (configured order)."""
        return backups

    def _group_changed(self) -> None:
        """Hook: the set of servers in the group changed (a subclass rebuilds its state)."""
        self._weights_changed()

    def _weights_changed(self) -> None:
        """Hook: `update()` was called without a membership change (maybe a weight changed)."""

    @property
    def group(self) -> tuple[Candidate, ...]:
        """The servers `pick()` chooses from now (for stats and tests)."""
        return tuple(self._group)

    @property
    def using_backups(self) -> bool:
        """True while traffic goes to backup servers because no active one is usable."""
        return self._using_backups

    # -- picking ----------------------------------------------------------------------

    def pick(self, key: bytes | None = None, avoid: Collection[Candidate] = ()) -> Candidate | None:
        """Choose a server for a new session, or None when no server is usable.

        `key` is the request's hashing input (client address bytes for `source`). A server
        in `avoid` is returned only when every server of the group is in it.
        """
        if not self._group:
            return None
        skip = self._effective_skip(frozenset(id(s) for s in avoid)) if avoid else None
        chosen = self._select(key, skip)
        if chosen is not None and not chosen.usable:
            # A caller changed a server without calling update(): repair instead of sending
            # a session to a server known to be down. Costs one attribute read per pick.
            self.update()
            if not self._group:
                return None
            if avoid:
                skip = self._effective_skip(frozenset(id(s) for s in avoid))
            chosen = self._select(key, skip)
        return chosen

    def _effective_skip(self, skip: frozenset[int] | None) -> frozenset[int] | None:
        """`skip`, or None when it covers the whole group (then anyone is better than 503)."""
        if skip is None or self._group_ids <= skip:
            return None
        return skip

    def _select(self, key: bytes | None, skip: frozenset[int] | None) -> Candidate | None:
        """Choose within `self._group` (never empty here), skipping ids in `skip`; at least
        one group member is not in `skip`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        names = ",".join(s.name for s in self._group)
        extra = " backups" if self._using_backups else ""
        return f"<{type(self).__name__} [{names}]{extra}>"
