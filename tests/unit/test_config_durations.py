"""Durations: the table of accepted spellings, the refusals and their hints, round trips."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pylb.config.durations import (
    MAX_SECONDS,
    UNITS,
    DurationError,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("0ms", 0.0),
        ("250ms", 0.25),
        ("100ms", 0.1),
        ("1.5s", 1.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("500us", 0.0005),
        (" 5s ", 5.0),
        ("0.5ms", 0.0005),
        ("24d", 24 * 86400.0),
    ],
)
def test_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("5", "no unit"),
        ("5.5", "no unit"),
        ("", "empty"),
        ("s", "invalid duration"),
        ("5 s", "invalid duration"),
        ("-5s", "invalid duration"),
        ("+5s", "invalid duration"),
        ("5S", "invalid duration"),
        ("5sec", "invalid duration"),
        ("1e3s", "invalid duration"),
        (".5s", "invalid duration"),
        ("5.s", "invalid duration"),
        ("nan", "invalid duration"),
        ("inf", "invalid duration"),
        ("30s1m", "largest to smallest"),
        ("1s1s", "largest to smallest"),
        ("25d", "too long"),
        ("1_000ms", "invalid duration"),
        ("\uff15s", "invalid duration"),  # fullwidth 5: \d would take it, [0-9] does not
    ],
)
def test_refused(text: str, hint: str) -> None:
    with pytest.raises(DurationError, match=hint):
        parse_duration(text)


def test_bare_number_hint_names_both_units() -> None:
    with pytest.raises(DurationError) as e:
        parse_duration("5")
    assert "5s or 5ms" in str(e.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.25, "250ms"),
        (1.5, "1500ms"),
        (90.0, "90s"),
        (120.0, "2m"),
        (3600.0, "1h"),
        (86400.0, "1d"),
        (0.0005, "500us"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


_VALID = re.compile(r"([0-9]+(\.[0-9]+)?(us|ms|s|m|h|d))+")


@given(st.text(max_size=12))
def test_garbage_is_refused_or_well_formed(text: str) -> None:
    """Whatever the input, either a DurationError, or it matched the strict grammar and
    gave a finite, non-negative number of seconds."""
    try:
        value = parse_duration(text)
    except DurationError:
        return
    assert _VALID.fullmatch(text.strip())
    assert 0.0 <= value <= MAX_SECONDS


@given(st.text(alphabet="0123456789.smhdu -+e", max_size=10))
def test_near_misses_are_refused_or_well_formed(text: str) -> None:
    try:
        value = parse_duration(text)
    except DurationError:
        return
    assert _VALID.fullmatch(text.strip())
    assert 0.0 <= value <= MAX_SECONDS


@given(st.integers(min_value=0, max_value=10_000), st.sampled_from(list(UNITS)))
def test_round_trip_integer_units(n: int, unit: str) -> None:
    text = f"{n}{unit}"
    seconds = n * UNITS[unit] / 1_000_000
    if seconds > MAX_SECONDS:
        with pytest.raises(DurationError):
            parse_duration(text)
        return
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=int(MAX_SECONDS * 1_000_000)))
def test_format_round_trips_any_whole_microsecond(us: int) -> None:
    seconds = us / 1_000_000
    assert parse_duration(format_duration(seconds)) == seconds
