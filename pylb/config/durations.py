"""Durations as operators write them: ``250ms``, ``5s``, ``1.5s``, ``2m``, ``1h``, ``1m30s``.

A unit is mandatory. HAProxy reads a bare ``5`` as 5 *milliseconds*, which is the classic way
to get a 5 ms server timeout when 5 s was meant; pylb refuses the bare number and says which
unit to add, so a config ported from HAProxy cannot silently change meaning.

The grammar is strict (one regex, no float() on arbitrary text): one or more
``NUMBER UNIT`` parts, units in decreasing order without repeats (``1m30s``, not ``30s1m``),
NUMBER is digits with an optional decimal part (no sign, no exponent). Units: ``us``, ``ms``,
``s``, ``m``, ``h``, ``d``. The value is computed exactly (Decimal) and returned as float
seconds, so ``100ms`` is exactly ``0.1`` and ``format_duration`` round-trips.
"""

from __future__ import annotations

import re
from decimal import Decimal

# Units in microseconds, in the only order they may appear in a compound duration.
UNITS: dict[str, int] = {
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
    "us": 1,
}
_ORDER = list(UNITS)

# HAProxy's own ceiling (2^31-1 ms, about 24.8 days): above it timers overflow there, and
# a larger value is always a typo (an extra digit or the wrong unit) here.
MAX_SECONDS = 2_147_483.647

_PART = r"(?P<num>[0-9]{1,15}(?:\.[0-9]{1,9})?)(?P<unit>us|ms|s|m|h|d)"
_PART_RE = re.compile(_PART)
_WHOLE_RE = re.compile(rf"(?:{_PART.replace('?P<num>', '').replace('?P<unit>', '')})+")
_BARE_NUMBER_RE = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")


class DurationError(ValueError):
    """The text is not a duration; the message says what to write instead."""


def parse_duration(text: str) -> float:
    """``"1m30s"`` -> ``90.0``. Raises DurationError with a hint on anything else."""
    if not isinstance(text, str):
        raise DurationError(f"expected a duration such as 5s, got {type(text).__name__}")
    s = text.strip()
    if not s:
        raise DurationError("empty duration: write a number and a unit, e.g. 5s or 250ms")
    if _BARE_NUMBER_RE.fullmatch(s):
        raise DurationError(
            f"duration {s!r} has no unit: add one, e.g. {s}s or {s}ms "
            "(HAProxy reads a bare number as milliseconds, pylb refuses to guess)"
        )
    if not _WHOLE_RE.fullmatch(s):
        raise DurationError(
            f"invalid duration {s!r}: expected a number and a unit "
            "(us, ms, s, m, h, d), e.g. 250ms, 5s, 1.5s, 2m, 1m30s"
        )
    total = Decimal(0)
    last = -1
    for m in _PART_RE.finditer(s):
        rank = _ORDER.index(m.group("unit"))
        if rank <= last:
            raise DurationError(
                f"invalid duration {s!r}: units must go from largest to smallest, "
                "each once (e.g. 1m30s)"
            )
        last = rank
        total += Decimal(m.group("num")) * UNITS[m.group("unit")]
    seconds = total / 1_000_000
    if seconds > Decimal(str(MAX_SECONDS)):
        raise DurationError(
            f"duration {s!r} is too long: the maximum is 24d (HAProxy's 2^31 ms limit)"
        )
    return float(seconds)


def format_duration(seconds: float) -> str:
    """Shortest single-unit form: ``0.25`` -> ``"250ms"``, ``90.0`` -> ``"90s"``,
    ``3600.0`` -> ``"1h"``. Rounds to whole microseconds, the finest unit."""
    if seconds < 0:
        raise ValueError("negative duration")
    us = round(Decimal(repr(float(seconds))) * 1_000_000)
    if us == 0:
        return "0s"
    for unit, size in UNITS.items():
        if us % size == 0:
            return f"{us // size}{unit}"
    raise AssertionError("unreachable: 1us divides everything")  # pragma: no cover
