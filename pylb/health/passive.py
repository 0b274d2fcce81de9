"""Passive observation of real traffic (HAProxy `observe layer4`).

An active check runs every `inter`; a dead server meanwhile keeps receiving new sessions.
Real traffic notices first: a refused, timed-out or reset connect to a server is counted
here at once, so the server leaves the balancer after `fall` such errors instead of after
`fall` check intervals, and the next active check is brought forward to `fastinter`.

Split as the rest of the subsystem: `Observer.decide()` is pure (counts consecutive
errors, says what to do when `error_limit` is reached, with HAProxy's `on-error` modes);
`observe(server, obs)` is the one-line apply the data plane calls, which goes through the
server's running check (`Server.check`) so the verdict, logs and timers stay in one place.

A server without an active check is never marked down by observation: nothing would
bring it back up (HAProxy refuses `observe` without `check` for the same reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pylb.health.types import CheckResult, CheckStatus, Observation, OnError

if TYPE_CHECKING:
    from pylb.proxy.backend import Server


@dataclass(frozen=True, slots=True)
class ObservePolicy:
    """HAProxy `error-limit` and `on-error`. pylb's default counts every observed error as
    one failed check (error-limit 1, fail-check): with `fall: 3` three refused connects take
    a server out, which is what "traffic leaves a dead server before the next check" needs,
    and one stray reset cannot."""

    error_limit: int = 1
    on_error: OnError = OnError.FAIL_CHECK


class Observer:
    """Consecutive-error counter of one server. Loop thread only."""

    __slots__ = ("consecutive", "policy")

    def __init__(self, policy: ObservePolicy | None = None) -> None:
        self.policy = policy or ObservePolicy()
        self.consecutive = 0

    def reset(self) -> None:
        """A passed active check clears the run (HAProxy clears consecutive_errors)."""
        self.consecutive = 0

    def decide(self, obs: Observation, info: str = "") -> tuple[OnError, CheckResult] | None:
        """Count `obs`; when `error_limit` consecutive errors are reached, return the
        `on-error` action and the HANA result to account, and start a new run."""
        if obs is Observation.CONNECT_OK:
            self.consecutive = 0
            return None
        self.consecutive += 1
        if self.consecutive < max(self.policy.error_limit, 1):
            return None
        n, self.consecutive = self.consecutive, 0
        text = f"Detected {n} consecutive errors, last one was: {obs.value}"
        if info:
            text += f" ({info})"
        return self.policy.on_error, CheckResult.of(CheckStatus.HANA, info=text)


_BY_CONNECT_KIND = {
    "timeout": Observation.CONNECT_TIMEOUT,
    "refused": Observation.CONNECT_REFUSED,
    "reset": Observation.RESET,
}


def observation_for(connect_kind: str) -> Observation:
    """Map `pylb.proxy.connect.ConnectError.kind` to an observation."""
    return _BY_CONNECT_KIND.get(connect_kind, Observation.CONNECT_ERROR)


def observe(server: Server, obs: Observation, info: str = "") -> None:
    """Report what real traffic saw on `server` (data plane entry point; cheap: a success
    on a server without errors is two attribute reads). No-op without an active check."""
    handle = server.check
    if handle is not None:
        handle.observe(obs, info)
