"""Plain stand-ins for pylb.proxy.backend.Server in balancer tests (no I/O, no backend)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pylb.balance.base import Balancer


@dataclass(eq=False)  # identity semantics, like the runtime Server
class Srv:
    name: str
    key: str = ""
    weight: int = 1
    backup: bool = False
    cur_conns: int = 0
    usable: bool = True
    maxconn: int | None = None
    priority: int | None = None

    def __post_init__(self) -> None:
        if not self.key:
            self.key = f"{self.name}.test:5000"

    def has_slot(self) -> bool:
        return self.maxconn is None or self.cur_conns < self.maxconn


def servers(*specs: str | tuple, **common) -> list[Srv]:
    """servers("A", ("B", 2)) -> [Srv("A"), Srv("B", weight=2)] with distinct keys."""
    out = []
    for i, spec in enumerate(specs):
        name, weight = (spec, 1) if isinstance(spec, str) else spec
        out.append(Srv(name, key=f"192.0.2.{10 + i}:5000", weight=weight, **common))
    return out


def names(bal: Balancer, n: int, key: bytes | None = None) -> list[str]:
    out = []
    for _ in range(n):
        s = bal.pick(key)
        out.append(s.name if s is not None else None)
    return out


def counts(bal: Balancer, n: int) -> Counter:
    return Counter(names(bal, n))
