"""Balancing algorithms by name (the `balance:` key), resolved once per backend build.

`options` a class declares (e.g. writer-pin's `failback`) are passed to it; other known
options are dropped, so a caller may pass every listen-level option to every algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence

from pylb.balance.base import Balancer, Candidate
from pylb.balance.first import First
from pylb.balance.leastconn import LeastConn
from pylb.balance.roundrobin import RoundRobin
from pylb.balance.source import Source
from pylb.balance.writerpin import WriterPin

BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls for cls in (RoundRobin, LeastConn, Source, First, WriterPin)
}

# Every option some algorithm understands (listen-level keys of the config).
KNOWN_OPTIONS: frozenset[str] = frozenset().union(*(cls.options for cls in BALANCERS.values()))


def balancer_class(name: str) -> type[Balancer]:
    """The class for a `balance:` name; its `needs` is what config checking reads."""
    try:
        return BALANCERS[name]
    except KeyError:
        known = ", ".join(sorted(BALANCERS))
        raise ValueError(f"unknown balance algorithm {name!r} (known: {known})") from None


def make_balancer(
    name: str, servers: Sequence[Candidate], *, allbackups: bool = False, **opts: object
) -> Balancer:
    """Build the balancer `name` over `servers` (configured order matters: backups, first).

    Raises ValueError for an unknown name, TypeError for an option no algorithm knows.
    """
    cls = balancer_class(name)
    unknown = set(opts) - KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"unknown balancer option(s): {', '.join(sorted(unknown))}")
    kwargs = {k: v for k, v in opts.items() if k in cls.options}
    return cls(servers, allbackups=allbackups, **kwargs)  # type: ignore[call-arg]
