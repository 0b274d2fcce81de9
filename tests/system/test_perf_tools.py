"""Issue 7's tools, run for real (short): `make bench` (perf/bench.py with HAProxy, nginx
and wrk from Debian) and `make locust` (perf/locust_run.py, Locust against `pylb demo`).

Each skips with the reason when what it needs is missing; `make test` installs haproxy,
nginx and wrk (as root) and Locust (the `perf` extra), so CI runs both. They check that
the tools work end to end and produce what docs/performance.md quotes, not the figures
themselves (those need a quiet machine and minutes of load, not a test suite).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists()


@pytest.mark.skipif(
    not all(_have(t) for t in ("haproxy", "nginx", "wrk")),
    reason="haproxy, nginx and wrk are needed (make test installs them as root)",
)
def test_bench_runs_both_proxies_and_writes_the_tables(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "perf" / "bench.py"),
        "--rounds",
        "1",
        "--duration",
        "1",
        "--only",
        "http_keepalive,tcp_small,idle",
        "--idle",
        "300",
        "--out",
        str(tmp_path),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (md,) = tmp_path.glob("bench-*.md")
    (js,) = tmp_path.glob("bench-*.json")
    text = md.read_text()
    assert "Ratios pylb / HAProxy" in text
    assert "Targets of issue 7" in text
    data = json.loads(js.read_text())
    for name in ("http_keepalive", "tcp_small"):
        sc = data["scenarios"][name]
        for proxy in ("haproxy", "pylb"):
            (run,) = sc["samples"][proxy]
            assert run["errors"] == 0, (name, proxy, run)
            assert run["rps"] > 100, (name, proxy, run)
            assert run["cpu_us_per_req"] > 0
            assert run["rss_kb"] > 0
        assert sc["ratio"]["rps"] > 0
    idle = data["scenarios"]["idle"]["median"]
    for proxy in ("haproxy", "pylb"):
        assert idle[proxy]["opened"] == 300 and idle[proxy]["failed"] == 0, idle
    # every process the bench started is gone: no haproxy/nginx/pylb of its tmp dir left
    left = subprocess.run(["pgrep", "-f", "pylb-bench-"], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="Locust is needed (the perf extra; make test installs it)",
)
def test_locust_mix_runs_against_the_demo_without_failures() -> None:
    cmd = [sys.executable, str(ROOT / "perf" / "locust_run.py"), "-t", "6s", "-u", "6", "-r", "6"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    # Every task of the OpenStack mix ran, and none failed (Locust's summary table).
    for name in ("keystone", "nova", "neutron", "glance GET", "glance PUT"):
        assert re.search(rf"{name}[^\n]*\s+\d+\s+0\(0\.00%\)", out), (name, out[-4000:])
    agg = re.search(r"Aggregated\s+(\d+)\s+(\d+)\(", out)
    assert agg is not None and int(agg.group(1)) > 20 and agg.group(2) == "0", out[-4000:]
