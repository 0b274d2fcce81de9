"""HAProxy's `balance first`: fill servers in configured order.

The first usable server with a free connection slot (cur_conns < its maxconn) takes the
session, so the later servers stay idle until the earlier ones are full; it is meant for
servers with a `maxconn` (without one, the first server takes everything). Weight plays
no part except that weight 0 excludes a server, as for every algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from pylb.balance.base import Balancer, Candidate, slot_probe


class First(Balancer):
    """`balance first`: the earliest server in configured order that has room."""

    name: ClassVar[str] = "first"

    __slots__ = ("_probes",)

    def __init__(self, servers: Sequence[Candidate], *, allbackups: bool = False) -> None:
        self._probes: list[Callable[[], bool] | None] = []
        super().__init__(servers, allbackups=allbackups)

    def _group_changed(self) -> None:
        self._probes = [slot_probe(s) for s in self._group]

    def _select(self, key: bytes | None, skip: frozenset[int] | None) -> Candidate | None:
        fallback: Candidate | None = None
        for s, probe in zip(self._group, self._probes, strict=True):
            if skip is not None and id(s) in skip:
                continue
            if probe is None or probe():
                return s
            if fallback is None:
                fallback = s
        # All full: the first one anyway; the data plane's maxconn/queue logic decides.
        return fallback
