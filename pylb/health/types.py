"""Health-check types only (HAProxy's `check-t.h` split): statuses, results, transitions.

No logic beyond formatting lives here, so the state machine (`state.py`), the probes
(`probes.py`), passive observation (`passive.py`) and the scheduler (`scheduler.py`) can all
import it without importing each other.

A check outcome has two levels, as in HAProxy: a fine-grained `CheckStatus` (what exactly
happened: L4 timeout, L7 wrong status...) and the coarse verdict `passed` that the
rise/fall state machine consumes. Operators read the fine one; the FSM reads the coarse one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class CheckStatus(enum.Enum):
    """HAProxy's HCHK_STATUS_* codes, with their short name and their description (the
    exact words HAProxy prints after "reason:", so operators' alert patterns keep working).

    `layer7` marks statuses that carry an HTTP code (HAProxy prints ", code: N" for those:
    the statuses at or above HCHK_STATUS_L57DATA).
    """

    def __new__(cls, short: str, description: str, passed: bool, layer7: bool) -> CheckStatus:
        obj = object.__new__(cls)
        obj._value_ = short
        return obj

    def __init__(self, short: str, description: str, passed: bool, layer7: bool) -> None:
        self.short = short
        self.description = description
        self.passed = passed
        self.layer7 = layer7

    UNKNOWN = ("UNK", "Unknown", False, False)
    INI = ("INI", "Initializing", False, False)
    SOCKERR = ("SOCKERR", "Socket error", False, False)
    L4OK = ("L4OK", "Layer4 check passed", True, False)
    L4TOUT = ("L4TOUT", "Layer4 timeout", False, False)
    L4CON = ("L4CON", "Layer4 connection problem", False, False)
    L6OK = ("L6OK", "Layer6 check passed", True, False)
    L6TOUT = ("L6TOUT", "Layer6 timeout", False, False)
    L6RSP = ("L6RSP", "Layer6 invalid response", False, False)
    L7TOUT = ("L7TOUT", "Layer7 timeout", False, False)
    L7RSP = ("L7RSP", "Layer7 invalid response", False, False)
    L7OK = ("L7OK", "Layer7 check passed", True, True)
    L7OKC = ("L7OKC", "Layer7 check conditionally passed", True, True)
    L7STS = ("L7STS", "Layer7 wrong status", False, True)
    # Passive observation of real traffic (HAProxy `observe layer4`): HCHK_STATUS_HANA.
    HANA = ("HANA", "Health analyze", False, False)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One finished check (active probe or passive observation).

    `code` is the HTTP status for layer-7 checks, else None. `info` is HAProxy's check
    `desc`: the detail an operator needs ("Connection refused", "Service Unavailable").
    `duration` is in seconds (the model's unit); logs print whole milliseconds as HAProxy.
    """

    status: CheckStatus
    passed: bool
    code: int | None = None
    info: str = ""
    duration: float | None = None

    @classmethod
    def of(
        cls,
        status: CheckStatus,
        *,
        code: int | None = None,
        info: str = "",
        duration: float | None = None,
    ) -> CheckResult:
        """A result whose verdict is the status's own (the usual case)."""
        return cls(status, status.passed, code, info, duration)

    @property
    def duration_ms(self) -> int | None:
        # HAProxy prints whole milliseconds, truncated (its ticks are ms).
        return None if self.duration is None else int(self.duration * 1000)

    def reason(self) -> str:
        """`reason: ..., code: ..., info: "...", check duration: Nms` as HAProxy's
        srv_append_status() writes it (without the leading ", ")."""
        parts = [f"reason: {self.status.description}"]
        if self.status.layer7 and self.code is not None:
            parts.append(f"code: {self.code}")
        if self.info:
            parts.append(f'info: "{self.info}"')
        ms = self.duration_ms
        if ms is not None:
            parts.append(f"check duration: {ms}ms")
        return ", ".join(parts)

    def short(self) -> str:
        """Compact form for stats ("L7STS/503 in 2ms", HAProxy's LastChk column)."""
        s = self.status.short
        if self.status.layer7 and self.code is not None:
            s += f"/{self.code}"
        ms = self.duration_ms
        if ms is not None:
            s += f" in {ms}ms"
        return s


@dataclass(frozen=True, slots=True)
class Transition:
    """The server's operational state changed: `up` is the new state, `result` the check
    that decided it (what the UP/DOWN log line reports)."""

    up: bool
    result: CheckResult


@dataclass(frozen=True, slots=True)
class Step:
    """What the state machine decided after one result.

    `reported`: the health counter moved (HAProxy's `report`: worth a debug line);
    `transition`: set only when the server flips up/down; `due`: when the next active check
    should run (loop-clock seconds), already jittered.
    """

    transition: Transition | None
    reported: bool
    due: float


class InitState(enum.Enum):
    """The state a server starts in when checks begin (HAProxy 3.1 `init-state`).

    UP (HAProxy's default): up, but the first failed check takes it down;
    FULLY_UP: up, needs `fall` failures; DOWN: down, the first passed check brings it up;
    FULLY_DOWN: down, needs `rise` passes.
    """

    UP = "up"
    FULLY_UP = "fully-up"
    DOWN = "down"
    FULLY_DOWN = "fully-down"


class Observation(enum.Enum):
    """What the data plane saw on a real connection (input of passive observation).

    Values are the texts HAProxy's health analyzer writes in its HANA description.
    """

    CONNECT_OK = "L4 successful connection"
    CONNECT_REFUSED = "L4 unsuccessful connection"  # RST to our SYN
    CONNECT_TIMEOUT = "L4 timeout"  # no answer to SYN within timeout connect
    CONNECT_ERROR = "L4 unsuccessful connection (error)"  # unreachable, other errno
    RESET = "L4 connection reset"  # RST on an established connection before any response


class OnError(enum.Enum):
    """HAProxy `on-error`: what a run of `error_limit` observed errors does."""

    FASTINTER = "fastinter"  # only bring the next active check forward
    FAIL_CHECK = "fail-check"  # count as one failed check (and fastinter)
    SUDDEN_DEATH = "sudden-death"  # leave the server one failure away from down
    MARK_DOWN = "mark-down"  # down at once


class CheckHandle(Protocol):
    """What passive observation needs from a server's running check (set on
    `Server.check` by the scheduler; None when the server has no active check)."""

    def observe(self, obs: Observation, info: str = "") -> None: ...
