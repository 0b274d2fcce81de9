"""Health as the rest of the program sees it: per listener, how many servers can take
traffic, and whether a `critical: true` listener has none left.

Consumers: the stats page, and VRRP tracking (a node whose critical listener has no server
must lower its priority so the peer takes the VIP, as keepalived's `track_script` with a
HAProxy check script did). Pure functions over `Backend` objects: call them whenever the
answer is needed; they cost one pass over the servers.

"Up" here means what the balancer may use for new sessions: operationally up, not in
drain/maintenance, and weight above 0 (`Balancer.eligible`). A listener whose servers are
all administratively drained has nothing to offer either, and VRRP should know that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pylb.balance.base import Balancer
from pylb.proxy.backend import Backend


@dataclass(frozen=True, slots=True)
class ListenerHealth:
    name: str
    active_up: int
    active_total: int
    backup_up: int
    backup_total: int
    critical: bool

    @property
    def available(self) -> bool:
        """At least one server (active or backup) can take a new session."""
        return self.active_up + self.backup_up > 0

    @property
    def critical_down(self) -> bool:
        """A `critical: true` listener with no server left: VRRP should step down."""
        return self.critical and not self.available

    @property
    def using_backups(self) -> bool:
        return self.active_up == 0 and self.backup_up > 0


def listener_health(backend: Backend) -> ListenerHealth:
    act = act_up = bck = bck_up = 0
    for s in backend.servers:
        ok = Balancer.eligible(s)
        if s.backup:
            bck += 1
            bck_up += ok
        else:
            act += 1
            act_up += ok
    return ListenerHealth(backend.name, act_up, act, bck_up, bck, backend.conf.critical)


def health_summary(
    backends: Mapping[str, Backend] | Iterable[Backend],
) -> dict[str, ListenerHealth]:
    """{listener name: ListenerHealth} for `WorkerState.backends` (a mapping) or any
    iterable of backends, in their order."""
    items = backends.values() if isinstance(backends, Mapping) else backends
    return {b.name: listener_health(b) for b in items}


def critical_down(summary: Mapping[str, ListenerHealth]) -> list[str]:
    """Names of critical listeners with no server left (empty = nothing to track)."""
    return [name for name, h in summary.items() if h.critical_down]
