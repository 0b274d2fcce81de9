"""RFC 3768 / RFC 5798 §6.1 timer formulas, checked against the RFCs' own numbers."""

from __future__ import annotations

import pytest

from pylb.vrrp.timers import master_down_interval, skew_time


def test_v2_defaults_rfc3768() -> None:
    # RFC 3768 §6.1: Priority default 100, Advertisement_Interval default 1 s.
    assert skew_time(100, 1.0, 2) == pytest.approx(156 / 256)  # 0.609375 s
    assert master_down_interval(100, 1.0, 2) == pytest.approx(3 + 156 / 256)


def test_v3_defaults_rfc5798() -> None:
    # RFC 5798 §6.1: Priority 100, Advertisement_Interval 100 centiseconds.
    # Skew_Time = ((256 - 100) * 100) / 256 = 60.9375 cs.
    assert skew_time(100, 1.0, 3) == pytest.approx(0.609375)
    assert master_down_interval(100, 1.0, 3) == pytest.approx(3.609375)


def test_v2_skew_ignores_interval() -> None:
    # v2: the skew is a fraction of one second whatever the interval.
    assert skew_time(200, 5.0, 2) == pytest.approx(56 / 256)
    assert master_down_interval(200, 5.0, 2) == pytest.approx(15 + 56 / 256)


def test_v3_skew_scales_with_master_interval() -> None:
    # 100 ms adverts (10 cs): MDI = 30 cs + (156 * 10 / 256) cs.
    assert skew_time(100, 0.1, 3) == pytest.approx(0.0609375)
    assert master_down_interval(100, 0.1, 3) == pytest.approx(0.3609375)
    # The largest v3 interval, 4095 cs.
    assert master_down_interval(1, 40.95, 3) == pytest.approx(3 * 40.95 + 255 * 40.95 / 256)


def test_bounds_and_ordering() -> None:
    # Owner (255) and the lowest backup (1): extremes of the skew.
    assert skew_time(255, 1.0, 2) == pytest.approx(1 / 256)
    assert skew_time(1, 1.0, 2) == pytest.approx(255 / 256)
    # Priority 0 (stop) is legal input for the formula.
    assert skew_time(0, 1.0, 3) == pytest.approx(1.0)
    # A higher priority always times out first: that is the election.
    for version in (2, 3):
        mdis = [master_down_interval(p, 1.0, version) for p in range(1, 256)]
        assert mdis == sorted(mdis, reverse=True)


def test_keepalived_observation() -> None:
    # FACTS.md: keepalived priority 110, advert_int 1: 3 s + (256 - 110)/256 s.
    assert master_down_interval(110, 1.0, 2) == pytest.approx(3.5703125)


def test_keepalived_microsecond_arithmetic_matches() -> None:
    # keepalived VRRP_TIMER_SKEW (v3): ((256 - prio) * cs * 625) / 16 microseconds.
    for prio in (1, 50, 100, 150, 254):
        for cs in (1, 10, 100, 333, 4095):
            usec = ((256 - prio) * cs * 625) // 16
            assert abs(skew_time(prio, cs / 100, 3) - usec / 1e6) < 1e-6


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        skew_time(256, 1.0, 2)
    with pytest.raises(ValueError):
        skew_time(100, 1.0, 4)
