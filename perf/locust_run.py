#!/usr/bin/env python3
"""`make locust`: start `pylb demo` on free ports, run perf/locustfile.py against it
headless for a bounded time, print the summary and failures, stop the demo.

    .venv/bin/python perf/locust_run.py [-t 30s] [-u 20] [-r 10] [--host URL]

Exit code: Locust's (non-zero when any request failed), or 1 when the demo did not start.
With --host, no demo is started and that service is loaded instead.

The demo writes an access line per request: its output goes to a file (a pipe nobody
reads would stall it), whose first lines give the URL it listens on.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_demo(log: Path, deadline_s: float = 20.0) -> tuple[subprocess.Popen, str]:
    fh = open(log, "wb")  # noqa: SIM115  # the child keeps writing to it; closed by the OS
    p = subprocess.Popen(
        [sys.executable, "-m", "pylb", "demo", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    fh.close()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        m = re.search(r"service at (http://\S+?)/?\s", log.read_text(errors="replace"))
        if m:
            return p, m.group(1)
        if p.poll() is not None:
            break
        time.sleep(0.1)  # polling the child's output file; bounded by the deadline
    stop(p)
    raise RuntimeError(f"pylb demo did not start:\n{log.read_text(errors='replace')}")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-t", "--run-time", default="30s", help="bounded run time (30s)")
    ap.add_argument("-u", "--users", type=int, default=20)
    ap.add_argument("-r", "--spawn-rate", type=float, default=10)
    ap.add_argument("--host", default="", help="load this URL instead of a pylb demo")
    ns = ap.parse_args(argv)
    m = re.fullmatch(r"(\d+)([smh]?)", ns.run_time)
    if m is None:
        ap.error("-t: e.g. 30s, 2m")
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _interrupt)  # SIGINT too: it may be inherited ignored
    demo = None
    with tempfile.TemporaryDirectory(prefix="pylb-locust-") as tmp:
        try:
            host = ns.host
            if not host:
                demo, host = start_demo(Path(tmp) / "demo.log")
                print(f"locust: pylb demo at {host}", flush=True)
            cmd = [
                sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"),
                "--headless", "--only-summary", "-u", str(ns.users), "-r", str(ns.spawn_rate),
                "-t", ns.run_time, "--stop-timeout", "10", "--host", host,
            ]  # fmt: skip
            print("locust:", " ".join(cmd), flush=True)
            rc = subprocess.run(cmd, timeout=seconds + 120).returncode
            print(f"locust: exit code {rc}", flush=True)
            return rc
        except KeyboardInterrupt:
            return 130
        finally:
            if demo is not None:
                with contextlib.suppress(Exception):
                    stop(demo)


if __name__ == "__main__":
    sys.exit(main())
