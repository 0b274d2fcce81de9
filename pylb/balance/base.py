"""The contract between the data plane and a load-balancing algorithm.

Modelled on HAProxy's `struct lb_ops`: an algorithm sees servers only through the small
`Candidate` protocol, is told when eligibility changes (`update()`), and answers `pick()`.
It never does I/O and never reads the clock, so every algorithm is unit-tested with plain
objects. Backup servers are handled here once, not in every algorithm: they are a separate
group used only while no active server is usable.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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


class Balancer:
    """Base class: keeps the active and backup groups; subclasses choose within a group.

    `update()` must be called after any change of a server's `usable` or `weight`; it is
    idempotent and cheap. `pick()` returns None when no server is usable (NOSRV).
    `avoid` names servers that just failed for this request (retry/redispatch); they are
    chosen only when nothing else is usable.
    """

    name: ClassVar[str] = ""
    # Inputs the algorithm needs from a request, checked at config load ("source" needs a
    # client address key; HAProxy's BE_LB_NEED_* bits).
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, servers: Sequence[Candidate], *, allbackups: bool = False) -> None:
        raise NotImplementedError

    def update(self) -> None:
        raise NotImplementedError

    def pick(self, key: bytes | None = None, avoid: Collection[Candidate] = ()) -> Candidate | None:
        raise NotImplementedError

    def on_take(self, server: Candidate) -> None:
        """A session started on `server` (after pick succeeded and a connection is used)."""

    def on_drop(self, server: Candidate) -> None:
        """A session on `server` ended."""
