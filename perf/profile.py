#!/usr/bin/env python3
"""Where a pylb worker spends its time under one bench scenario (py-spy, sampling).

    .venv/bin/pip install py-spy          # a dev tool, not a dependency of pylb
    .venv/bin/python perf/profile.py http_keepalive [--duration 10] [--native]

Starts the bench's nginx backends and one pylb (`workers: 1`, same config and pinning as
perf/bench.py), loads it with wrk for the scenario while `py-spy record --format raw`
samples the worker, then prints the functions with the most samples on top of the stack
(self) and anywhere on it (inclusive), and writes the collapsed stacks to
perf/results/profile-<scenario>-<stamp>.txt (feed them to flamegraph.pl or speedscope).

Samples are wall-clock samples of a busy thread: time the worker spends inside a C call
(uvloop's transport.write -> send(2), httptools' parser) counts for the Python function
that made the call, which is what we want to know. `--native` adds the C frames.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import bench  # perf/ is run as a script, the repo root is not on the path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy `--format raw` (Brendan Gregg's collapsed stacks): `f1;f2;...;fn COUNT`,
    outermost frame first. Returns [(frames, count)]."""
    out = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def frame_key(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`: samples of one function on
    different lines are added up."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    return f"{m.group('func')} ({Path(m.group('file')).name})"


def top_functions(
    stacks: list[tuple[list[str], int]], n: int = 15
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(total samples, top n by self samples, top n by inclusive samples)."""
    total = sum(c for _, c in stacks)
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for frames, c in stacks:
        keys = [frame_key(f) for f in frames]
        if keys:
            self_c[keys[-1]] += c
        for k in set(keys):  # recursion counts once per sample
            incl[k] += c
    return total, self_c.most_common(n), incl.most_common(n)


def render(total: int, self_top: list, incl_top: list) -> str:
    lines = [f"{total} samples", "", "self (top of stack):"]
    lines += [f"  {c / total:6.1%}  {k}" for k, c in self_top]
    lines += ["", "inclusive (anywhere on the stack):"]
    lines += [f"  {c / total:6.1%}  {k}" for k, c in incl_top]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in bench.SCENARIOS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=names)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--native", action="store_true", help="include C frames")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--pylb-cmd", default="", help="as perf/bench.py --pylb-cmd")
    ns = ap.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("profile: py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    for sig in (bench.signal.SIGTERM, bench.signal.SIGINT, bench.signal.SIGHUP):
        bench.signal.signal(sig, bench._on_sigterm)  # everything started is stopped
    sc = next(s for s in bench.SCENARIOS if s.name == ns.scenario)
    cpus = sorted(bench.os.sched_getaffinity(0))
    proxy_cpus, load_cpus = ([cpus[0]], cpus[1:]) if len(cpus) >= 2 else (None, None)
    if load_cpus:
        bench.os.sched_setaffinity(0, load_cpus)
    tmp = Path(tempfile.mkdtemp(prefix="pylb-profile-"))
    env = bench.Env(tmp, proxy_cpus, load_cpus, len(load_cpus) if load_cpus else 1)
    if ns.pylb_cmd:
        env.pylb_cmd = shlex.split(ns.pylb_cmd)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = tmp / "stacks.txt"
    try:
        (tmp / "www").mkdir()
        (tmp / "www" / "big.bin").write_bytes(bytes(range(256)) * (bench.BIG_SIZE // 256))
        backends = bench.free_ports(3)
        (tmp / "nginx.conf").write_text(bench.nginx_conf(tmp, backends, 2000))
        env.procs["nginx"] = bench.Proc(
            "nginx",
            [*env.pin(load_cpus), "nginx", "-p", str(tmp), "-e", str(tmp / "e.log"), "-c",
             str(tmp / "nginx.conf")],
            tmp / "nginx.log",
        )  # fmt: skip
        pp = bench.free_ports(2)
        (tmp / "pylb.yaml").write_text(bench.pylb_yaml(pp[0], pp[1], backends, 2000, 1))
        pylb = bench.Proc(
            "pylb",
            [*env.pin(proxy_cpus), *env.pylb_cmd, "run", "-c", str(tmp / "pylb.yaml")],
            tmp / "pylb.log",
        )  # fmt: skip
        env.procs["pylb"] = pylb
        bench.wait_ready(env.procs["nginx"], backends)
        bench.wait_ready(pylb, pp)
        port = pp[0] if sc.listener == "http" else pp[1]
        url = f"http://127.0.0.1:{port}{sc.path}"
        bench.run_wrk(env, url, 2, sc.connections, sc.headers)  # warm-up
        worker = bench.children_of(pylb.pid)[0]
        spy = subprocess.Popen(
            [*env.pin(load_cpus), pyspy, "record", "--pid", str(worker), "--format", "raw",
             "--rate", str(ns.rate), "--nonblocking", "--duration", f"{ns.duration + 1:g}",
             "--output", str(raw), *(["--native"] if ns.native else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=bench._child_setup,
        )  # fmt: skip
        time.sleep(0.5)  # py-spy attaches
        m = bench.measure(env, pylb, url, ns.duration, sc.connections, sc.headers)
        try:
            spy.wait(timeout=ns.duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        if not raw.exists():
            print(f"profile: py-spy wrote nothing: {spy.stderr.read().decode()}", file=sys.stderr)
            return 1
        stacks = parse_collapsed(raw.read_text().splitlines())
        total, self_top, incl_top = top_functions(stacks, ns.top)
        head = (
            f"pylb {sc.name}: {m['rps']:,.0f} req/s, CPU {m['cpu_us_per_req']:.1f} us/req "
            f"(user {m['user_us_per_req']:.1f} + sys {m['sys_us_per_req']:.1f}), "
            f"py-spy {ns.rate}/s{' --native' if ns.native else ''}\n"
        )
        text = head + render(total, self_top, incl_top)
        bench.RESULTS.mkdir(parents=True, exist_ok=True)
        out = bench.RESULTS / f"profile-{sc.name}-{stamp}"
        shutil.copy(raw, out.with_suffix(".txt"))
        out.with_suffix(".summary.txt").write_text(text)
        print(text)
        print(f"written: {out}.txt (collapsed stacks) and {out}.summary.txt")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for p in list(env.procs.values())[::-1]:
            with contextlib.suppress(Exception):
                p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
