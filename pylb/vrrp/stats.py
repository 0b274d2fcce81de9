"""Per-instance VRRP counters and rate-limited logging of dropped adverts.

A misconfigured or hostile neighbour can send adverts many times a second; a log line
per packet would flood syslog and cost the speaker its timing. keepalived's answer
(`log_rate_limited_error`, one flag per reason, flags cleared when a good packet is
accepted) is kept: the first drop of each reason is logged, the rest are counted, and
the reason may log again after `interval` seconds or after an accepted advert. Counters
are never rate-limited: `pylb ctl show vrrp` and the metrics read them.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

from pylb.vrrp.packet import Verdict

log = logging.getLogger("pylb.vrrp")

DEFAULT_LOG_INTERVAL = 60.0  # seconds between two lines of one reason while it repeats


class DropStats:
    """Counters by verdict (and a few send-side ones) plus per-reason log limiting."""

    __slots__ = ("_last_logged", "_suppressed", "counters", "interval", "logger")

    def __init__(
        self, *, interval: float = DEFAULT_LOG_INTERVAL, logger: logging.Logger = log
    ) -> None:
        self.interval = interval
        self.logger = logger
        self.counters: dict[str, int] = {v.value: 0 for v in Verdict}
        self.counters.update(adverts_sent=0, priority_zero_sent=0, priority_zero_rcvd=0)
        self._last_logged: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def count(self, name: str | Verdict, n: int = 1) -> None:
        key = name.value if isinstance(name, Verdict) else name
        self.counters[key] = self.counters.get(key, 0) + n

    def record(self, verdict: Verdict, now: float, instance: str, detail: str = "") -> None:
        """Count one received advert's verdict; log drops and mismatches rate-limited."""
        self.count(verdict)
        if verdict is Verdict.OK:
            self.reset()  # keepalived clears its flags on an accepted packet
            return
        level = logging.WARNING if verdict is Verdict.ADDR_MISMATCH else logging.INFO
        what = "accepted despite" if verdict.accepted else "dropped"
        self.log_ratelimited(
            verdict, now, level, "(%s) advert %s: %s %s", instance, what, verdict.value, detail
        )

    def log_ratelimited(
        self, reason: Hashable, now: float, level: int, msg: str, *args: object
    ) -> bool:
        """Log `msg % args` unless `reason` was logged less than `interval` ago.

        Returns whether a line was emitted. Nothing is formatted when the level is off.
        """
        last = self._last_logged.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return False
        if not self.logger.isEnabledFor(level):
            return False
        self._last_logged[reason] = now
        skipped = self._suppressed.pop(reason, 0)
        if skipped:
            self.logger.log(level, msg + " (%d similar suppressed)", *args, skipped)
        else:
            self.logger.log(level, msg, *args)
        return True

    def reset(self) -> None:
        """Let every reason log again at its next occurrence."""
        self._last_logged.clear()

    def snapshot(self) -> dict[str, int]:
        return dict(self.counters)
