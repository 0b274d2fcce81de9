"""The rise/fall state machine of one server's check: pure, no I/O, no clock reads.

HAProxy's design (`check.c set_server_check_status`), kept because it gives hysteresis
with one integer: `health` runs from 0 to rise+fall-1 and the server is up exactly when
`health >= rise`.

    health:  0 ........ rise-1 | rise ........ rise+fall-1
             DOWN (rising)     | UP (falling)       fully UP

- a passed check: health += 1; reaching `rise` jumps to rise+fall-1 (fully up);
- a failed check: health -= 1; dropping below `rise` jumps to 0 (down).

So from fully up it takes `fall` consecutive failures to go down, from 0 it takes `rise`
consecutive passes to come up, and one result of the other kind during a pending change
cancels it (a pass while falling restores full health, a failure while rising restores 0).

Intervals (`srv_getinter`): `inter` while fully up, `downinter` while down at health 0,
`fastinter` in between (a transition is pending): a flapping server is decided quickly and a
dead one is not hammered.

Time comes in as arguments (`now`, loop-clock seconds) and randomness as `u` in [0, 1),
so tests drive it with a fake clock and fixed numbers.
"""

from __future__ import annotations

from pylb.config.model import CheckParams
from pylb.health.types import CheckResult, InitState, OnError, Step, Transition


def jittered(interval: float, spread: float, u: float) -> float:
    """`interval` moved by up to ±`spread` (a fraction, HAProxy's spread-checks / 100) so
    that checks of many servers drift apart instead of firing together. u=0.5 -> exact."""
    rv = interval * spread
    return interval + rv - 2.0 * rv * u


def first_delay(interval: float, position: int, count: int, spread: float, u: float) -> float:
    """Delay before a server's first check (HAProxy `start_checks()`): servers are placed
    evenly over one interval by position, plus up to `spread` of jitter, so a listener with
    many servers never checks them all in the same millisecond after a start or reload."""
    count = max(count, 1)
    return interval * position / count + interval * spread * u


class CheckState:
    """Health counter, verdict and next due time of one server's check. Loop thread only."""

    __slots__ = (
        "down_transitions",
        "due",
        "failed_checks",
        "fall",
        "health",
        "params",
        "rise",
        "spread",
    )

    def __init__(
        self, params: CheckParams, *, init: InitState = InitState.UP, spread: float = 0.0
    ) -> None:
        if params.rise < 1 or params.fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.params = params
        self.rise = params.rise
        self.fall = params.fall
        self.spread = spread
        self.due = 0.0
        self.failed_checks = 0  # HAProxy chkfail: failed results while not already at 0
        self.down_transitions = 0  # HAProxy chkdown
        top = self.rise + self.fall - 1
        self.health = {
            InitState.UP: self.rise,
            InitState.FULLY_UP: top,
            InitState.DOWN: self.rise - 1,
            InitState.FULLY_DOWN: 0,
        }[init]

    # -- queries ----------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.health >= self.rise

    @property
    def pending(self) -> bool:
        """A transition has started but is not decided (neither fully up nor fully down)."""
        return 0 < self.health < self.rise + self.fall - 1

    def next_interval(self) -> float:
        """Nominal delay to the next check, by state (HAProxy `srv_getinter`)."""
        p = self.params
        if self.health == self.rise + self.fall - 1:
            return p.inter
        if self.health == 0:
            return p.downinter or p.inter
        return p.fastinter or p.inter

    # -- scheduling -------------------------------------------------------------------

    def start(self, now: float, position: int, count: int, u: float = 0.0) -> float:
        """Set and return the due time of the first check."""
        self.due = now + first_delay(self.params.inter, position, count, self.spread, u)
        return self.due

    def reschedule(self, now: float, u: float = 0.5) -> float:
        """Set and return the due time of the next check after one finished at `now`."""
        self.due = now + jittered(self.next_interval(), self.spread, u)
        return self.due

    def expedite(self, now: float) -> float:
        """Bring the next check forward to `now + fastinter` if that is sooner (what every
        HAProxy `on-error` mode does after observed errors). Returns the due time."""
        soon = now + (self.params.fastinter or self.params.inter)
        if soon < self.due:
            self.due = soon
        return self.due

    # -- results ----------------------------------------------------------------------

    def _apply(self, result: CheckResult) -> tuple[Transition | None, bool]:
        was_up = self.up
        top = self.rise + self.fall - 1
        reported = False
        if result.passed:
            if self.health < top:
                reported = True
                self.health += 1
                if self.health >= self.rise:
                    self.health = top
        elif self.health > 0:
            reported = True
            self.failed_checks += 1
            self.health -= 1
            if self.health < self.rise:
                self.health = 0
        transition = None
        if self.up != was_up:
            transition = Transition(self.up, result)
            if not self.up:
                self.down_transitions += 1
        return transition, reported

    def feed(self, result: CheckResult, now: float, u: float = 0.5) -> Step:
        """Account an active check's result that finished at `now`; schedule the next."""
        transition, reported = self._apply(result)
        return Step(transition, reported, self.reschedule(now, u))

    def observe_error(self, result: CheckResult, now: float, mode: OnError) -> Step:
        """Account a run of errors seen by real traffic (`result` is a HANA result), with
        HAProxy's `on-error` semantics; then bring the next check forward to fastinter.
        The due time is only ever moved earlier: an observation never delays a check."""
        transition: Transition | None = None
        reported = False
        if mode is OnError.SUDDEN_DEATH and self.health > self.rise:
            self.health = self.rise + 1  # after the failure below: one failure from down
        if mode is OnError.MARK_DOWN and self.up:
            # The failure below lands below rise: down. (While down or rising, the failure
            # alone resets health to 0; raising it first would fake an up->down flip.)
            self.health = self.rise
        if mode is not OnError.FASTINTER:
            transition, reported = self._apply(result)
        return Step(transition, reported, self.expedite(now))

    def __repr__(self) -> str:
        top = self.rise + self.fall - 1
        return f"<CheckState health={self.health}/{top} up={self.up} due={self.due:.3f}>"
