"""Diagnostics of a configuration: what is wrong, where, and how bad.

A diagnostic carries the key path (``listen.keystone.servers[1].weight``) beside the
position, because the position alone is useless for a config built from a dict (the demo,
the importers) and the path alone is slow to find in a long file. Lists are indexed from 0,
like JSON paths and jq.

`SourceMap` is the bridge between the loader (which knows the YAML node positions) and the
semantic lint (a pure function over the frozen model): the lint asks "where was
``listen.web.timeout.connect`` written?" and gets the position of the value, even when the
value was inherited from ``defaults`` (then it gets the defaults' path and position, so a bad
default is reported once, where it is written, not once per listener).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pylb.config.model import Pos

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding. line/col are 1-based; 0 means "position unknown" (dict or missing file)."""

    file: str
    line: int
    col: int
    severity: Severity
    path: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        # Compiler style so editors and CI annotators jump to the spot; without a position,
        # "FILE: error: ..." like gcc/ld do, instead of a fake 0:0.
        where = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {self.severity}: {what}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "path": self.path,
            "message": self.message,
        }


class ConfigError(Exception):
    """A configuration that must not be run. `.diagnostics` has every error (and warning)."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.is_error]
        first = str(errors[0]) if errors else "invalid configuration"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        super().__init__(first + more)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    def report(self) -> str:
        """All diagnostics, one per line, as `pylb check` prints them."""
        return "\n".join(str(d) for d in self.diagnostics)


_PARENT = re.compile(r"(\.[^.\[\]]*|\[\d+\])$")


def parent_path(path: str) -> str:
    """``a.b[2].c`` -> ``a.b[2]`` -> ``a.b`` -> ``a`` -> ``""``."""
    if not path:
        return ""
    m = _PARENT.search(path)
    if m is None or m.start() == 0:
        return ""
    return path[: m.start()]


def path_under(path: str, ancestor: str) -> bool:
    """True when `path` is `ancestor` or lies inside it (``a.b`` is under ``a``, ``ab`` isn't)."""
    if not ancestor:
        return True
    return path == ancestor or path.startswith((ancestor + ".", ancestor + "["))


@dataclass(slots=True)
class SourceMap:
    """Positions of the keys and values of one loaded document, by key path."""

    source: str
    values: dict[str, Pos] = field(default_factory=dict)  # path -> where the value starts
    keys: dict[str, Pos] = field(default_factory=dict)  # path -> where its key is written
    origins: dict[str, str] = field(default_factory=dict)  # listen path -> defaults path
    # list path -> source path of each item the model kept, in model order: a rejected
    # item leaves no hole in the model's tuple, so model index != index in the file
    items: dict[str, list[str]] = field(default_factory=dict)
    # list paths where the loader rejected (and reported) some item: rules about the
    # whole list ("no servers", "every server disabled") would judge a partial list
    partial: set[str] = field(default_factory=set)

    def item_path(self, list_path: str, index: int) -> str:
        """Source path of the model's `index`-th item of the list at `list_path`."""
        paths = self.items.get(list_path)
        if paths is not None and index < len(paths):
            return paths[index]
        return f"{list_path}[{index}]"

    def origin(self, path: str) -> str:
        """The path where the value in effect at `path` was written (defaults for inherited)."""
        probe = path
        while probe:
            if probe in self.origins:
                return self.origins[probe] + path[len(probe) :]
            probe = parent_path(probe)
        return path

    def pos(self, path: str, *, key: bool = False) -> Pos:
        """Position of `path` (its value, or its key with key=True), else of its nearest
        written ancestor, else unknown (line 0)."""
        probe = path
        while probe:
            first, second = (self.keys, self.values) if key else (self.values, self.keys)
            if probe in first:
                return first[probe]
            if probe in second:
                return second[probe]
            probe = parent_path(probe)
        return Pos(self.source, 0, 0)

    def diag(self, severity: Severity, path: str, message: str, *, key: bool = False) -> Diagnostic:
        """A diagnostic at the place `path`'s value came from (following inheritance)."""
        where = self.origin(path)
        p = self.pos(where, key=key)
        return Diagnostic(self.source, p.line, p.col, severity, where, message)


def sort_diagnostics(diags: list[Diagnostic]) -> list[Diagnostic]:
    """Reading order, duplicates dropped (an inherited default reported by N listeners)."""
    seen: set[Diagnostic] = set()
    unique: list[Diagnostic] = []
    for d in diags:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return sorted(unique, key=lambda d: (d.file, d.line == 0, d.line, d.col))
