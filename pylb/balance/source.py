"""Source-address hashing by weighted rendezvous hashing (HRW), HAProxy `balance source`.

Every server scores each client: score = weight / -ln(u), where u in (0, 1) is a 64-bit
BLAKE2b hash of (server key, client address bytes); the highest score wins. Why HRW rather
than a ring or `hash % n`:

- a server leaving moves only the clients it had (everyone else's winner is unchanged),
  and a server coming back takes back exactly those: no ring, no virtual nodes to tune;
- the hash input is the server's "ip:port", never its position in the list, so two proxy
  nodes with the servers listed in different orders (or a VRRP backup after failover)
  send a client to the same server (HAProxy's `hash-key addr-port` for the same reason);
- the `-ln(u)` form makes a server's share of clients proportional to its weight;
- BLAKE2b rather than Python's `hash()`, which is salted per process.

A pick costs one short BLAKE2b per server in the group; backends have a handful of servers.

Without a key (no client address, e.g. a UNIX socket client) the pick falls back to
round-robin over the group, as HAProxy does. An avoided server (retry) gives its place to
the next-best score, which is again the same on every node.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import ClassVar

from pylb.balance.base import Balancer, Candidate

_SCALE = 1.0 / 2.0**64


def hrw_score(server_key: str, weight: int, key: bytes) -> float:
    """The rendezvous score of a server for a client key (pure; deterministic everywhere)."""
    h = hashlib.blake2b(server_key.encode() + b"\0", digest_size=8)
    h.update(key)
    return _score(h.digest(), weight)


def _score(digest: bytes, weight: int) -> float:
    u = (int.from_bytes(digest, "big") + 0.5) * _SCALE  # strictly inside (0, 1)
    return weight / -math.log(u)


class Source(Balancer):
    """`balance source`: a client address always reaches the same server while it is up."""

    name: ClassVar[str] = "source"
    needs: ClassVar[frozenset[str]] = frozenset({"client_addr"})

    __slots__ = ("_hashers", "_rr")

    def __init__(self, servers: Sequence[Candidate], *, allbackups: bool = False) -> None:
        self._hashers: list = []
        self._rr = 0
        super().__init__(servers, allbackups=allbackups)

    def _group_changed(self) -> None:
        # The per-server hash prefix is computed once; a pick copies it and adds the key.
        self._hashers = [
            hashlib.blake2b(s.key.encode() + b"\0", digest_size=8) for s in self._group
        ]
        if self._rr >= len(self._group):
            self._rr = 0

    def _select(self, key: bytes | None, skip: frozenset[int] | None) -> Candidate | None:
        group = self._group
        if key is None:
            return self._round_robin(skip)
        best: Candidate | None = None
        best_score = -1.0
        for s, prefix in zip(group, self._hashers, strict=True):
            if skip is not None and id(s) in skip:
                continue
            h = prefix.copy()
            h.update(key)
            score = _score(h.digest(), s.weight)
            # Equal scores (practically never) go to the smaller key: order-independent.
            if score > best_score or (
                score == best_score and best is not None and s.key < best.key
            ):
                best, best_score = s, score
        return best

    def _round_robin(self, skip: frozenset[int] | None) -> Candidate | None:
        group = self._group
        n = len(group)
        for _ in range(n):
            s = group[self._rr]
            self._rr = self._rr + 1 if self._rr + 1 < n else 0
            if skip is None or id(s) not in skip:
                return s
        return None
