"""The pure rise/fall state machine, driven by a fake clock (plain numbers) and fixed jitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pylb.config.model import Address, CheckParams
from pylb.health.passive import ObservePolicy, Observer
from pylb.health.probes import build_request, default_host, status_expected
from pylb.health.state import CheckState, first_delay, jittered
from pylb.health.types import CheckResult, CheckStatus, InitState, Observation, OnError

P = CheckParams(inter=2.0, fastinter=0.5, downinter=5.0, rise=2, fall=3)
OK = CheckResult.of(CheckStatus.L7OK, code=200, duration=0.001)
KO = CheckResult.of(CheckStatus.L4CON, info="Connection refused", duration=0.0)
HANA = CheckResult.of(CheckStatus.HANA, info="Detected 1 consecutive errors")


class FakeClock:
    """Time as a number the test moves; the state machine never reads a clock itself."""

    def __init__(self) -> None:
        self.now = 1000.0

    def at(self, due: float) -> float:
        assert due >= self.now, "a check must never be scheduled in the past"
        self.now = due
        return self.now


def feed_all(state: CheckState, clock: FakeClock, results: list[CheckResult]) -> list[bool | None]:
    """Feed results at their due times; return each step's transition (True=up, False=down)."""
    out: list[bool | None] = []
    for r in results:
        step = state.feed(r, clock.at(state.due))
        out.append(None if step.transition is None else step.transition.up)
    return out


def test_default_first_state_is_up_but_first_failure_takes_it_down() -> None:
    # HAProxy's default init-state "up": health starts at `rise`, not at the top.
    s = CheckState(P)
    assert s.up and s.health == P.rise and s.pending
    step = s.feed(KO, 1.0)
    assert step.transition is not None and step.transition.up is False
    assert step.transition.result is KO
    assert s.health == 0


def test_default_first_state_confirmed_by_a_pass() -> None:
    s = CheckState(P)
    step = s.feed(OK, 1.0)
    assert step.transition is None and step.reported
    assert s.health == P.rise + P.fall - 1 and not s.pending


@pytest.mark.parametrize(
    ("init", "up", "health"),
    [
        (InitState.UP, True, 2),
        (InitState.FULLY_UP, True, 4),
        (InitState.DOWN, False, 1),
        (InitState.FULLY_DOWN, False, 0),
    ],
)
def test_init_states(init: InitState, up: bool, health: int) -> None:
    s = CheckState(P, init=init)
    assert (s.up, s.health) == (up, health)


def test_down_exactly_at_fall_consecutive_failures() -> None:
    s, clock = CheckState(P, init=InitState.FULLY_UP), FakeClock()
    s.start(clock.now, 0, 1)
    assert feed_all(s, clock, [KO, KO, KO, KO]) == [None, None, False, None]
    assert not s.up and s.down_transitions == 1 and s.failed_checks == 3


def test_up_exactly_at_rise_consecutive_passes() -> None:
    s, clock = CheckState(P, init=InitState.FULLY_DOWN), FakeClock()
    s.start(clock.now, 0, 1)
    assert feed_all(s, clock, [OK, OK, OK]) == [None, True, None]
    assert s.up and s.health == 4


def test_hysteresis_a_pass_while_falling_restores_full_health() -> None:
    s, clock = CheckState(P, init=InitState.FULLY_UP), FakeClock()
    s.start(clock.now, 0, 1)
    assert feed_all(s, clock, [KO, KO, OK, KO, KO]) == [None, None, None, None, None]
    assert s.up
    assert feed_all(s, clock, [KO]) == [False]


def test_hysteresis_a_failure_while_rising_restores_zero() -> None:
    p = CheckParams(rise=3, fall=2)
    s, clock = CheckState(p, init=InitState.FULLY_DOWN), FakeClock()
    s.start(clock.now, 0, 1)
    assert feed_all(s, clock, [OK, OK, KO, OK, OK]) == [None] * 5
    assert not s.up and s.health == 2
    assert feed_all(s, clock, [OK]) == [True]


def test_failures_while_down_are_not_reported_or_counted() -> None:
    s = CheckState(P, init=InitState.FULLY_DOWN)
    step = s.feed(KO, 1.0)
    assert step.transition is None and not step.reported and s.failed_checks == 0


def test_intervals_inter_fastinter_downinter() -> None:
    s, clock = CheckState(P, init=InitState.FULLY_UP), FakeClock()
    s.start(clock.now, 0, 1)
    assert s.due == clock.now  # position 0, no jitter
    seen: list[float] = []
    for r in [OK, KO, KO, KO, KO, OK, OK]:
        before = clock.at(s.due)
        s.feed(r, before)
        seen.append(s.due - before)
    # fully up -> inter; falling -> fastinter; down at 0 -> downinter; rising -> fastinter;
    # up again (fully) -> inter
    assert seen == [2.0, 0.5, 0.5, 5.0, 5.0, 0.5, 2.0]


def test_intervals_fall_back_to_inter_when_unset() -> None:
    p = CheckParams(inter=1.0, fastinter=0.0, downinter=0.0, rise=2, fall=2)
    s = CheckState(p, init=InitState.FULLY_UP)
    assert s.feed(KO, 0.0).due == 1.0  # falling: fastinter 0 -> inter
    assert s.feed(KO, 1.0).due == 2.0  # down: downinter 0 -> inter


def test_rise_fall_one() -> None:
    s = CheckState(CheckParams(rise=1, fall=1), init=InitState.FULLY_UP)
    assert not s.pending
    t = s.feed(KO, 0.0).transition
    assert t is not None and not t.up
    t = s.feed(OK, 1.0).transition
    assert t is not None and t.up


def test_invalid_params_rejected() -> None:
    with pytest.raises(ValueError):
        CheckState(CheckParams(rise=0))


def test_first_checks_spread_by_position_and_jitter() -> None:
    # 4 servers over inter=2: 0, 0.5, 1, 1.5 s; jitter adds at most spread*inter.
    assert [first_delay(2.0, i, 4, 0.0, 0.7) for i in range(4)] == [0.0, 0.5, 1.0, 1.5]
    assert first_delay(2.0, 1, 4, 0.1, 0.5) == pytest.approx(0.6)
    s = CheckState(P, spread=0.1)
    assert s.start(100.0, 2, 4, 0.0) == pytest.approx(101.0)


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_jitter_bounds(u: float) -> None:
    d = jittered(2.0, 0.05, u)
    assert 1.9 < d <= 2.1
    assert jittered(2.0, 0.05, 0.5) == 2.0


def test_expedite_only_moves_earlier() -> None:
    s = CheckState(P, init=InitState.FULLY_UP)
    s.feed(OK, 10.0)
    assert s.due == 12.0
    assert s.expedite(10.1) == pytest.approx(10.6)
    assert s.expedite(10.5) == pytest.approx(10.6)  # later than due: unchanged


def test_observed_error_fail_check_counts_as_one_failure() -> None:
    s = CheckState(P, init=InitState.FULLY_UP)
    s.feed(OK, 0.0)
    steps = [s.observe_error(HANA, 0.1 * i, OnError.FAIL_CHECK) for i in range(1, 4)]
    assert [st.transition is not None for st in steps] == [False, False, True]
    assert steps[-1].transition is not None and steps[-1].transition.result is HANA
    assert steps[0].due == pytest.approx(0.6)  # fastinter from the observation


def test_observed_error_modes() -> None:
    s = CheckState(P, init=InitState.FULLY_UP)
    s.feed(OK, 0.0)  # next check at 2.0
    step = s.observe_error(HANA, 0.0, OnError.FASTINTER)
    assert step.transition is None and s.health == 4 and step.due == 0.5

    s = CheckState(P, init=InitState.FULLY_UP)
    assert s.observe_error(HANA, 0.0, OnError.SUDDEN_DEATH).transition is None
    assert s.up and s.health == P.rise
    t = s.feed(KO, 0.5).transition
    assert t is not None and not t.up

    s = CheckState(P, init=InitState.FULLY_UP)
    t = s.observe_error(HANA, 0.0, OnError.MARK_DOWN).transition
    assert t is not None and not t.up


def test_mark_down_while_rising_does_not_fake_a_flip() -> None:
    s = CheckState(CheckParams(rise=3, fall=2), init=InitState.FULLY_DOWN)
    s.feed(OK, 0.0)
    s.feed(OK, 1.0)
    step = s.observe_error(HANA, 2.0, OnError.MARK_DOWN)
    assert step.transition is None and s.health == 0


def test_observer_error_limit_and_reset() -> None:
    o = Observer(ObservePolicy(error_limit=2, on_error=OnError.FAIL_CHECK))
    assert o.decide(Observation.CONNECT_REFUSED) is None
    assert o.decide(Observation.CONNECT_OK) is None  # a success breaks the run
    assert o.decide(Observation.CONNECT_REFUSED) is None
    decided = o.decide(Observation.RESET, "Connection reset by peer")
    assert decided is not None
    mode, result = decided
    assert mode is OnError.FAIL_CHECK and result.status is CheckStatus.HANA and not result.passed
    assert result.info == (
        "Detected 2 consecutive errors, last one was: L4 connection reset"
        " (Connection reset by peer)"
    )
    assert o.consecutive == 0


# -- properties ---------------------------------------------------------------------------

params_st = st.builds(
    CheckParams,
    inter=st.just(2.0),
    fastinter=st.just(0.5),
    downinter=st.just(5.0),
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
)


@given(
    params_st,
    st.sampled_from(list(InitState)),
    st.lists(st.booleans(), max_size=60),
)
def test_property_flips_need_consecutive_runs(
    params: CheckParams, init: InitState, passes: list[bool]
) -> None:
    """Never down without `fall` consecutive failures since the last "fully up" point, never
    up without `rise` consecutive passes (except the documented init states that start
    one result away from a flip), and the counter stays in 0..rise+fall-1."""
    s = CheckState(params, init=init)
    top = params.rise + params.fall - 1
    run_ok = run_ko = 0
    # Results "already seen" implied by the initial state.
    if init is InitState.UP:
        run_ko = params.fall - 1
    elif init is InitState.DOWN:
        run_ok = params.rise - 1
    elif init is InitState.FULLY_UP:
        run_ko = 0
    now = 0.0
    for ok in passes:
        was_up = s.up
        if ok:
            run_ok, run_ko = run_ok + 1, 0
        else:
            run_ko, run_ok = run_ko + 1, 0
        step = s.feed(OK if ok else KO, now)
        now = step.due
        assert 0 <= s.health <= top
        if step.transition is not None:
            assert step.transition.up == s.up != was_up
            if s.up:
                assert run_ok >= params.rise
            else:
                assert run_ko >= params.fall
        else:
            assert s.up == was_up
        interval = s.next_interval()
        if s.health == top:
            assert interval == params.inter
        elif s.health == 0:
            assert interval == params.downinter
        else:
            assert interval == params.fastinter


def test_check_request_form() -> None:
    assert build_request("GET", "/a b/\u00e9?x=%20", "keystone") == (
        b"GET /a%20b/%C3%A9?x=%20 HTTP/1.0\r\nHost: keystone\r\n"
        b"Connection: close\r\nUser-Agent: pylb-check\r\n\r\n"
    )
    with pytest.raises(ValueError):
        build_request("GET", "/", "evil\r\nX-Injected: 1")
    assert default_host(Address("::1", 8080)) == "[::1]:8080"
    assert default_host(Address("10.0.0.1", 80)) == "10.0.0.1"
    assert status_expected(204, ((200, 299),)) and not status_expected(300, ((200, 299),))
