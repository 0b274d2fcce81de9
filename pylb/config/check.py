"""`pylb check FILE...`: validate configs without running them.

Output is made for two readers: a human or an editor (``FILE:LINE:COL: error: PATH: message``
lines, then one summary line per file) and a program (``--format json``, one document with
every diagnostic and the counts). The exit code is what CI and a reload script look at:
0 when no file has an error (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from pylb.config.errors import Diagnostic
from pylb.config.load import analyze_file
from pylb.config.model import Config

FORMATS = ("text", "json")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary(path: str, config: Config | None, errors: int, warnings: int) -> str:
    if errors or config is None:
        parts = [_plural(errors, "error")]
        if warnings:
            parts.append(_plural(warnings, "warning"))
        return f"{path}: " + ", ".join(parts)
    servers = sum(len(lst.servers) for lst in config.listens)
    line = f"{path}: OK ({_plural(len(config.listens), 'listener')}, {_plural(servers, 'server')})"
    if warnings:
        line += f", {_plural(warnings, 'warning')}"
    return line


def run_check(paths: list[str], fmt: str = "text", out: TextIO | None = None) -> int:
    """Check every file in `paths`; print diagnostics and summaries to `out` (stdout by
    default). Returns the exit code: 0 without errors, 1 with errors (2 for a bad `fmt`)."""
    out = sys.stdout if out is None else out
    if fmt not in FORMATS:
        print(
            f"pylb check: unknown format {fmt!r} (expected one of: {', '.join(FORMATS)})", file=out
        )
        return 2
    if not paths:
        print("pylb check: no file given", file=out)
        return 2
    files: list[dict[str, object]] = []
    every: list[Diagnostic] = []
    total_errors = total_warnings = 0
    for path in paths:
        config, diags = analyze_file(path)
        errors = sum(1 for d in diags if d.is_error)
        warnings = len(diags) - errors
        total_errors += errors
        total_warnings += warnings
        every.extend(diags)
        ok = errors == 0 and config is not None
        files.append(
            {
                "file": path,
                "ok": ok,
                "errors": errors,
                "warnings": warnings,
                "listeners": len(config.listens) if config is not None else None,
                "servers": (
                    sum(len(lst.servers) for lst in config.listens) if config is not None else None
                ),
            }
        )
        if fmt == "text":
            for d in diags:
                print(d, file=out)
            print(_summary(path, config, errors, warnings), file=out)
    if fmt == "json":
        doc = {
            "files": files,
            "diagnostics": [d.to_dict() for d in every],
            "counts": {
                "files": len(paths),
                "errors": total_errors,
                "warnings": total_warnings,
            },
            "ok": total_errors == 0,
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
    return 1 if total_errors else 0
