#!/usr/bin/env python3
"""pylb against HAProxy on this machine, same backends, same load, same run (issue 7).

    make bench                                  # or:
    .venv/bin/python perf/bench.py [--rounds 3] [--duration 5] [--only http_keepalive,...]

What it does: starts one nginx (the backends: three loopback ports, a small body at /small
and a 10 MB file at /big, access_log off), HAProxy (nbthread 1) and pylb (workers 1) with
equivalent configs (an HTTP listener and a TCP listener each, round-robin over the three
ports, health checks on, no access log), then runs wrk per scenario, alternating HAProxy
and pylb within each round (the order flips every round), and keeps the medians.

Why alternating rounds and medians: HAProxy measured against itself varies by about ±10%
between runs on these VMs (shared/FACTS.md); back-to-back blocks of one proxy then the
other would fold that drift into the ratio.

Pinning: on a machine with >= 2 CPUs the proxy under test runs alone on CPU 0 and wrk,
nginx and this script on the others (taskset), so the proxy's CPU is what limits it; on a
1-CPU machine everything runs unpinned and the report says so. The `workers` scenario is
the exception: pylb `workers: 2` against `workers: 1` only means something when the proxy
may use more than one CPU, so there everything is unpinned.

Recorded per proxy and scenario: req/s (and bytes/s), p50 / p99 latency (wrk --latency),
the proxy's CPU per request (utime + stime deltas from /proc/PID/stat of the proxy's
processes, / CLK_TCK), RSS; ratios pylb / HAProxy. Results go to
perf/results/bench-<UTC timestamp>.{md,json}.

Everything started is stopped at the end, on failure and on Ctrl-C / SIGTERM (children run
in their own session, with a parent-death signal so that even a SIGKILLed bench leaves
nothing behind). Every load is bounded in time (wrk -d, deadlines on every wait).

The pure parts (wrk output parsing, /proc/PID/stat accounting, medians, ratios, the
markdown table) are at the top and unit-tested in tests/unit/test_perf_parse.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "perf" / "results"
PROXIES = ("haproxy", "pylb")

# ------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------

_TIME_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}
_NUM = r"(\d+(?:\.\d+)?)"


def parse_time_us(text: str) -> float:
    """wrk's time format (`836.50us`, `1.20ms`, `2.00s`, `1.00m`) -> microseconds."""
    m = re.fullmatch(_NUM + r"(us|ms|s|m|h)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_bytes(text: str) -> float:
    """wrk's binary byte format (`11.29MB`, `1.10GB`, `512.00B`) -> bytes (1024 based)."""
    m = re.fullmatch(_NUM + r"([KMGTP]?B)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk byte count: {text!r}")
    return float(m.group(1)) * _BYTE_UNITS[m.group(2)]


@dataclass(slots=True)
class WrkResult:
    """What one wrk run reported. `errors` sums the socket errors (connect, read, write,
    timeout); `non2xx` the responses outside 2xx/3xx."""

    requests: int
    seconds: float
    bytes_read: float
    rps: float
    bytes_per_s: float
    latency_us: dict[int, float] = field(default_factory=dict)  # percentile -> us
    errors: int = 0
    non2xx: int = 0


def parse_wrk(text: str) -> WrkResult:
    """Parse the output of `wrk --latency` (wrk 4.x). Raises ValueError when the summary
    lines are missing (wrk failed before printing them)."""
    m = re.search(r"(\d+) requests in " + _NUM + r"(us|ms|s|m|h), (\S+) read", text)
    if m is None:
        raise ValueError("wrk output has no 'N requests in T, B read' line")
    requests = int(m.group(1))
    seconds = float(m.group(2)) * _TIME_UNITS[m.group(3)] / 1e6
    bytes_read = parse_bytes(m.group(4))
    m = re.search(r"Requests/sec:\s+" + _NUM, text)
    if m is None:
        raise ValueError("wrk output has no Requests/sec line")
    rps = float(m.group(1))
    latency: dict[int, float] = {}
    block = text.split("Latency Distribution", 1)
    if len(block) == 2:
        for pm in re.finditer(r"^\s+(\d+)%\s+(\S+)\s*$", block[1], re.M):
            latency[int(pm.group(1))] = parse_time_us(pm.group(2))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m is not None:
        errors = sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(m.group(1)) if m is not None else 0
    bps = bytes_read / seconds if seconds > 0 else 0.0
    return WrkResult(requests, seconds, bytes_read, rps, bps, latency, errors, non2xx)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat this bench uses (ticks of CLK_TCK, pages)."""

    pid: int
    comm: str
    ppid: int
    utime: int
    stime: int
    rss_pages: int


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line. `comm` may hold spaces and parentheses, so the
    fields are counted from the *last* ')' (proc(5))."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    pid = int(text[:lpar])
    comm = text[lpar + 1 : rpar]
    rest = text[rpar + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return ProcStat(
        pid=pid,
        comm=comm,
        ppid=int(rest[1]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        rss_pages=int(rest[21]),
    )


def cpu_ticks(stats: Iterable[ProcStat]) -> dict[int, int]:
    """{pid: utime + stime} of a group of processes, in ticks."""
    return {s.pid: s.utime + s.stime for s in stats}


def user_ticks(stats: Iterable[ProcStat]) -> dict[int, int]:
    return {s.pid: s.utime for s in stats}


def sys_ticks(stats: Iterable[ProcStat]) -> dict[int, int]:
    return {s.pid: s.stime for s in stats}


def cpu_delta_us(before: dict[int, int], after: dict[int, int], clk_tck: int) -> float:
    """CPU microseconds spent between two samples of {pid: utime+stime ticks}. A pid
    only in `after` (a restarted worker) counts from 0; one only in `before` (a worker
    that exited) is lost, as its last ticks can no longer be read."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return ticks * 1e6 / clk_tck


def per_unit(total: float, units: float) -> float | None:
    return total / units if units > 0 else None


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(pylb: float | None, haproxy: float | None) -> float | None:
    """pylb / HAProxy, or None when either is missing or HAProxy's is 0."""
    if pylb is None or haproxy is None or haproxy == 0:
        return None
    return pylb / haproxy


# Metrics of one measurement ("sample") and how they are summarised.
METRICS = (
    "rps",
    "bytes_per_s",
    "p50_us",
    "p99_us",
    "cpu_us_per_req",
    "user_us_per_req",
    "sys_us_per_req",
    "rss_kb",
    "errors",
)


def summarize(samples: Sequence[dict]) -> dict:
    """Median of each metric over the rounds of one proxy in one scenario."""
    out: dict = {}
    for k in METRICS:
        out[k] = median([s.get(k) for s in samples])
    return out


def ratios(summary: dict) -> dict:
    """{metric: pylb / HAProxy} for the metrics both proxies have."""
    h = summary.get("haproxy", {})
    p = summary.get("pylb", {})
    return {k: ratio(p.get(k), h.get(k)) for k in METRICS if k != "errors"}


@dataclass(frozen=True, slots=True)
class Target:
    """A target of issue 7: `metric` of `scenario`, pylb / HAProxy, compared with `limit`
    (`higher`: the ratio must be >= limit, else <= limit)."""

    name: str
    scenario: str
    metric: str
    limit: float
    higher: bool


TARGETS = (
    Target("HTTP keep-alive req/s", "http_keepalive", "rps", 0.9, True),
    Target("TCP req/s", "tcp_small", "rps", 0.95, True),
    Target("TCP bulk bytes/s", "tcp_bulk", "bytes_per_s", 0.95, True),
    Target("CPU per request, HTTP", "http_keepalive", "cpu_us_per_req", 1.2, False),
    Target("CPU per request, TCP", "tcp_small", "cpu_us_per_req", 1.2, False),
    Target("p99 latency, HTTP keep-alive", "http_keepalive", "p99_us", 1.5, False),
    Target("p99 latency, TCP", "tcp_small", "p99_us", 1.5, False),
    Target("RSS of 10 000 idle connections", "idle", "rss_delta_kb", 2.0, False),
)


def judge(targets: Sequence[Target], scenario_ratios: dict[str, dict]) -> list[dict]:
    """One verdict per target: its ratio and whether it holds (None: not measured)."""
    out = []
    for t in targets:
        r = scenario_ratios.get(t.scenario, {}).get(t.metric)
        holds = None if r is None else (r >= t.limit if t.higher else r <= t.limit)
        out.append(
            {
                "target": t.name,
                "scenario": t.scenario,
                "metric": t.metric,
                "limit": (">= " if t.higher else "<= ") + f"{t.limit:g}",
                "ratio": r,
                "holds": holds,
            }
        )
    return out


def _fmt(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "rate":
        return f"{v:,.0f}"
    if kind == "bytes":
        return f"{v / 1024**2:,.0f} MiB/s"
    if kind == "us":
        return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"
    if kind == "cpu":
        return f"{v:.1f}"
    if kind == "kb":
        return f"{v / 1024:.1f} MiB"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "int":
        return f"{v:.0f}"
    return str(v)


def render_markdown(result: dict) -> str:
    """The human table of a run: per-proxy medians, ratios, targets, skipped scenarios."""
    meta = result["meta"]
    lines = [
        f"# pylb vs HAProxy, {meta['date']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Versions: {meta['versions']}  ",
        f"Pinning: {meta['pinning']}  ",
        f"Rounds: {meta['rounds']} x {meta['duration']} s per proxy and scenario, "
        "alternating, medians.",
        "",
        "| scenario | proxy | req/s | bytes/s | p50 | p99 | CPU us/req (user + sys) | RSS "
        "| errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, sc in result["scenarios"].items():
        if sc.get("skipped") or name == "idle":
            continue
        for proxy, med in sc["median"].items():
            lines.append(
                f"| {name} | {proxy} | {_fmt(med.get('rps'), 'rate')} | "
                f"{_fmt(med.get('bytes_per_s'), 'bytes')} | {_fmt(med.get('p50_us'), 'us')} | "
                f"{_fmt(med.get('p99_us'), 'us')} | {_fmt(med.get('cpu_us_per_req'), 'cpu')} "
                f"({_fmt(med.get('user_us_per_req'), 'cpu')} + "
                f"{_fmt(med.get('sys_us_per_req'), 'cpu')}) | "
                f"{_fmt(med.get('rss_kb'), 'kb')} | {_fmt(med.get('errors'), 'int')} |"
            )
    lines += [
        "",
        "Ratios pylb / HAProxy (medians):",
        "",
        "| scenario | req/s | bytes/s | p50 | p99 | CPU/req | RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, sc in result["scenarios"].items():
        if sc.get("skipped") or name in ("idle", "workers"):
            continue
        r = sc.get("ratio", {})
        lines.append(
            f"| {name} | {_fmt(r.get('rps'), 'ratio')} | {_fmt(r.get('bytes_per_s'), 'ratio')} | "
            f"{_fmt(r.get('p50_us'), 'ratio')} | {_fmt(r.get('p99_us'), 'ratio')} | "
            f"{_fmt(r.get('cpu_us_per_req'), 'ratio')} | {_fmt(r.get('rss_kb'), 'ratio')} |"
        )
    idle = result["scenarios"].get("idle")
    if idle and not idle.get("skipped"):
        lines += [
            "",
            f"Idle keep-alive connections ({idle['connections']} opened, one request each, "
            "then held):",
            "",
            "| proxy | RSS before | RSS with them | growth | per connection |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for proxy, m in idle["median"].items():
            per = m.get("rss_per_conn_kb")
            lines.append(
                f"| {proxy} | {_fmt(m.get('rss_before_kb'), 'kb')} | "
                f"{_fmt(m.get('rss_after_kb'), 'kb')} | {_fmt(m.get('rss_delta_kb'), 'kb')} | "
                f"{'-' if per is None else f'{per:.2f} KiB'} |"
            )
        r = idle.get("ratio", {})
        lines.append("")
        lines.append(
            f"Ratio pylb / HAProxy: growth {_fmt(r.get('rss_delta_kb'), 'ratio')}, "
            f"total RSS with the connections {_fmt(r.get('rss_after_kb'), 'ratio')}."
        )
    wk = result["scenarios"].get("workers")
    if wk and not wk.get("skipped"):
        lines += [
            "",
            f"Workers ({wk['note']}):",
            "",
            "| instance | req/s | p99 | CPU us/req |",
            "| --- | ---: | ---: | ---: |",
        ]
        for inst, m in wk["median"].items():
            lines.append(
                f"| {inst} | {_fmt(m.get('rps'), 'rate')} | {_fmt(m.get('p99_us'), 'us')} | "
                f"{_fmt(m.get('cpu_us_per_req'), 'cpu')} |"
            )
        w = wk.get("workers2_over_1")
        lines.append("")
        lines.append(f"pylb workers 2 / workers 1 req/s: {_fmt(w, 'ratio')}")
    skipped = [(n, sc["skipped"]) for n, sc in result["scenarios"].items() if sc.get("skipped")]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{n}: {why}" for n, why in skipped) + "."]
    lines += ["", "Targets of issue 7 (pylb / HAProxy):", ""]
    lines += ["| target | limit | ratio | holds |", "| --- | --- | ---: | --- |"]
    for v in result["targets"]:
        holds = {True: "yes", False: "**no**", None: "not measured"}[v["holds"]]
        lines.append(f"| {v['target']} | {v['limit']} | {_fmt(v['ratio'], 'ratio')} | {holds} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------

SMALL_BODY = "hello from nginx\n"
BIG_SIZE = 10 * 1024 * 1024


def nginx_conf(d: Path, ports: Sequence[int], maxconn: int, nofile: int = 0) -> str:
    listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    return f"""# generated by perf/bench.py
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile or maxconn * 2 + 100};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections {maxconn + 100}; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 120s;
  keepalive_requests 100000000;
  client_body_temp_path {d}/ngx-body;
  proxy_temp_path {d}/ngx-proxy;
  fastcgi_temp_path {d}/ngx-fcgi;
  uwsgi_temp_path {d}/ngx-uwsgi;
  scgi_temp_path {d}/ngx-scgi;
  server {{
{listens}
    root {d}/www;
    location = /small {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
    location = /big {{ default_type application/octet-stream; alias {d}/www/big.bin; }}
  }}
}}
"""


def haproxy_cfg(http_port: int, tcp_port: int, servers: Sequence[int], maxconn: int) -> str:
    srv = "\n".join(f"  server s{i} 127.0.0.1:{p} check inter 2s" for i, p in enumerate(servers, 1))
    return f"""# generated by perf/bench.py: no log, nbthread 1, health checks on
global
  nbthread 1
  maxconn {maxconn}

defaults
  mode http
  balance roundrobin
  retries 3
  option redispatch
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-request 60s
  timeout http-keep-alive 60s

listen http
  bind 127.0.0.1:{http_port}
  mode http
  option httpchk GET /small
{srv}

listen tcp
  bind 127.0.0.1:{tcp_port}
  mode tcp
  timeout tunnel 1h
{srv}
"""


def pylb_yaml(
    http_port: int, tcp_port: int, servers: Sequence[int], maxconn: int, workers: int
) -> str:
    srv = "\n".join(
        f'      - {{name: s{i}, address: "127.0.0.1:{p}"}}' for i, p in enumerate(servers, 1)
    )
    return f"""# generated by perf/bench.py: no log, health checks on
global:
  workers: {workers}
  maxconn: {maxconn}
  log: {{target: none}}
  hard_stop_after: 2s
defaults:
  balance: roundrobin
  retries: 3
  redispatch: true
  timeout: {{connect: 5s, client: 60s, server: 60s, http_request: 60s,
            http_keep_alive: 60s, tunnel: 1h}}
  check: {{inter: 2s}}
listen:
  http:
    bind: ["127.0.0.1:{http_port}"]
    mode: http
    health: {{type: http, path: /small}}
    servers:
{srv}
  tcp:
    bind: ["127.0.0.1:{tcp_port}"]
    mode: tcp
    health: {{type: tcp}}
    servers:
{srv}
"""


# ------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child before exec: die with the bench (even a SIGKILLed one)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            st = read_stat(int(p.name))
            if st is not None and st.ppid == pid:
                out.append(st.pid)
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """A started server process (and, for pylb, its forked workers)."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        fh = open(log, "wb")  # noqa: SIM115  # closed in stop()
        self._fh = fh
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops them in order
            preexec_fn=_child_setup,
            cwd=str(log.parent),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its children (pylb's workers)."""
        return [self.pid, *children_of(self.pid)]

    def stats(self) -> list[ProcStat]:
        return [st for st in map(read_stat, self.pids()) if st is not None]

    def rss_kb(self) -> int:
        return sum(rss_kb(p) for p in self.pids())

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        # a worker left behind by a master that died first is in the same session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._fh.close()

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(port: int, path: str = "/small", timeout: float = 2.0) -> int:
    """Status of one GET (Connection: close), or 0 when it fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def wait_ready(proc: Proc, ports: Sequence[int], deadline_s: float = 20.0) -> None:
    """Every port answers GET /small with 200 (through the proxy, so its servers are up)."""
    deadline = time.monotonic() + deadline_s
    pending = list(ports)
    while pending:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready on {pending}:\n{proc.tail()}")
        if http_get(pending[0], timeout=1.0) == 200:
            pending.pop(0)
        else:
            time.sleep(0.1)  # polling a process we do not control; bounded by the deadline


@dataclass(slots=True)
class Env:
    tmp: Path
    proxy_cpus: list[int] | None
    load_cpus: list[int] | None
    wrk_threads: int
    pylb_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "pylb"])
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, dict[str, int]] = field(default_factory=dict)

    def pin(self, cpus: list[int] | None) -> list[str]:
        if cpus is None:
            return []
        return ["taskset", "-c", ",".join(map(str, cpus))]


def run_wrk(
    env: Env,
    url: str,
    duration: float,
    connections: int,
    headers: Sequence[str] = (),
    pin: bool = True,
) -> tuple[WrkResult, str]:
    argv = [
        *(env.pin(env.load_cpus) if pin else []),
        "wrk",
        f"-t{env.wrk_threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    p = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 30, preexec_fn=_child_setup
    )
    try:
        return parse_wrk(p.stdout), " ".join(argv)
    except ValueError as e:
        raise RuntimeError(f"wrk failed ({e}): {p.stdout}\n{p.stderr}") from e


def measure(
    env: Env,
    proxy: Proc,
    url: str,
    duration: float,
    connections: int,
    headers: Sequence[str] = (),
    pin: bool = True,
) -> dict:
    """One wrk run against `proxy`; the proxy's CPU is sampled around it."""
    before = proxy.stats()
    res, cmd = run_wrk(env, url, duration, connections, headers, pin)
    after = proxy.stats()
    if not proxy.alive():
        raise RuntimeError(f"{proxy.name} died during the run:\n{proxy.tail()}")
    user_us = cpu_delta_us(user_ticks(before), user_ticks(after), CLK_TCK)
    sys_us = cpu_delta_us(sys_ticks(before), sys_ticks(after), CLK_TCK)
    cpu_us = user_us + sys_us
    return {
        "rps": res.rps,
        "bytes_per_s": res.bytes_per_s,
        "requests": res.requests,
        "p50_us": res.latency_us.get(50),
        "p99_us": res.latency_us.get(99),
        "cpu_us_per_req": per_unit(cpu_us, res.requests),
        "user_us_per_req": per_unit(user_us, res.requests),
        "sys_us_per_req": per_unit(sys_us, res.requests),
        "cpu_us_per_mib": per_unit(cpu_us, res.bytes_read / 1024**2),
        "rss_kb": proxy.rss_kb(),
        "errors": res.errors + res.non2xx,
        "wrk": cmd,
    }


# ------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    listener: str  # "http" or "tcp"
    path: str
    connections: int
    headers: tuple[str, ...] = ()
    what: str = ""


SCENARIOS = (
    Scenario("http_keepalive", "http", "/small", 50, (), "HTTP/1.1 keep-alive, small body"),
    Scenario(
        "http_close",
        "http",
        "/small",
        50,
        ("Connection: close",),
        "HTTP, Connection: close (one new client connection per request)",
    ),
    Scenario("tcp_small", "tcp", "/small", 50, (), "keep-alive HTTP through the TCP relay"),
    Scenario("tcp_bulk", "tcp", "/big", 4, (), "10 MB responses through the TCP relay"),
)
ALL_NAMES = [s.name for s in SCENARIOS] + ["idle", "workers", "tls"]


def alternate(round_no: int) -> tuple[str, ...]:
    """HAProxy first in even rounds, pylb first in odd ones."""
    return PROXIES if round_no % 2 == 0 else PROXIES[::-1]


def run_scenario(env: Env, sc: Scenario, rounds: int, duration: float, log) -> dict:
    samples: dict[str, list[dict]] = {p: [] for p in PROXIES}
    for r in range(rounds):
        for proxy in alternate(r):
            port = env.ports[proxy][sc.listener]
            url = f"http://127.0.0.1:{port}{sc.path}"
            s = measure(env, env.procs[proxy], url, duration, sc.connections, sc.headers)
            samples[proxy].append(s)
            log(
                f"  {sc.name} round {r + 1} {proxy}: {s['rps']:,.0f} req/s "
                f"{s['bytes_per_s'] / 1024**2:,.0f} MiB/s p99 {_fmt(s['p99_us'], 'us')} "
                f"cpu {_fmt(s['cpu_us_per_req'], 'cpu')} us/req errors {s['errors']}"
            )
    med = {p: summarize(samples[p]) for p in PROXIES}
    return {
        "what": sc.what,
        "connections": sc.connections,
        "samples": samples,
        "median": med,
        "ratio": ratios(med),
    }


def open_idle(port: int, n: int, deadline_s: float) -> tuple[list[socket.socket], int]:
    """`n` keep-alive connections, each having had one request answered, then left idle.
    Returns (the sockets, how many failed). Stops at the deadline."""
    req = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    socks: list[socket.socket] = []
    failed = 0
    deadline = time.monotonic() + deadline_s
    for _ in range(n):
        if time.monotonic() > deadline:
            failed += n - len(socks) - failed
            break
        s = socket.socket()
        try:
            s.settimeout(5.0)
            s.connect(("127.0.0.1", port))
            s.sendall(req)
            data = b""
            while not data.endswith(SMALL_BODY.encode()):
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("closed")
                data += chunk
            socks.append(s)
        except OSError:
            s.close()
            failed += 1
    return socks, failed


def run_idle(env: Env, n: int, log) -> dict:
    """RSS of each proxy before and with `n` idle keep-alive client connections."""
    per: dict[str, dict] = {}
    for proxy in PROXIES:
        proc = env.procs[proxy]
        before = proc.rss_kb()
        t0 = time.monotonic()
        socks, failed = open_idle(env.ports[proxy]["http"], n, deadline_s=120.0)
        try:
            opened = time.monotonic() - t0
            time.sleep(1.0)  # let the proxy finish its bookkeeping before reading RSS
            after = proc.rss_kb()
            alive = proc.alive()
        finally:
            for s in socks:
                s.close()
        delta = after - before
        per[proxy] = {
            "rss_before_kb": before,
            "rss_after_kb": after,
            "rss_delta_kb": delta,
            "rss_per_conn_kb": delta / len(socks) if socks else None,
            "opened": len(socks),
            "failed": failed,
            "open_seconds": opened,
        }
        log(
            f"  idle {proxy}: {len(socks)} open ({failed} failed) in {opened:.1f}s, "
            f"RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB"
            + ("" if alive else " (PROXY DIED)")
        )
        wait_closed(proc, env.ports[proxy]["http"])
    r = {
        k: ratio(per["pylb"].get(k), per["haproxy"].get(k))
        for k in ("rss_after_kb", "rss_delta_kb", "rss_per_conn_kb")
    }
    return {"connections": n, "median": per, "ratio": r}


def count_established(proc_net_tcp: str, port: int) -> int:
    """ESTABLISHED sockets (state 01) whose local port is `port`, in /proc/net/tcp text."""
    n = 0
    for line in proc_net_tcp.splitlines()[1:]:
        f = line.split()
        if len(f) > 3 and f[3] == "01" and f[1].rsplit(":", 1)[-1] == f"{port:04X}":
            n += 1
    return n


def wait_closed(proc: Proc, port: int, deadline_s: float = 15.0) -> None:
    """Wait until the proxy has closed the idle connections we dropped (no ESTABLISHED
    socket on its listening port left), so the next scenario starts clean."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.alive():
        try:
            text = Path("/proc/net/tcp").read_text()
        except OSError:
            return
        if count_established(text, port) == 0:
            return
        time.sleep(0.2)  # polling the kernel's table; bounded by the deadline


def run_workers(env: Env, rounds: int, duration: float, maxconn: int, log) -> dict:
    """pylb workers 2 vs workers 1 (and HAProxy nbthread 1 for reference), HTTP keep-alive,
    everything unpinned so a second worker has a CPU to run on."""
    ports = free_ports(2)
    servers = env.ports["nginx"]["servers"]
    cfg = env.tmp / "pylb-w2.yaml"
    cfg.write_text(pylb_yaml(ports[0], ports[1], servers, maxconn, workers=2))
    w2 = Proc("pylb-w2", [*env.pylb_cmd, "run", "-c", str(cfg)], env.tmp / "w2.log")
    env.procs["pylb-w2"] = w2
    all_cpus = sorted(os.sched_getaffinity(0) | set(env.proxy_cpus or []))
    saved: dict[int, set[int]] = {}
    try:
        wait_ready(w2, [ports[0]])
        for name in ("haproxy", "pylb", "nginx"):
            for pid in env.procs[name].pids():
                with contextlib.suppress(OSError):
                    saved[pid] = os.sched_getaffinity(pid)
                    os.sched_setaffinity(pid, all_cpus)
        insts = {
            "haproxy": (env.procs["haproxy"], env.ports["haproxy"]["http"]),
            "pylb workers 1": (env.procs["pylb"], env.ports["pylb"]["http"]),
            "pylb workers 2": (w2, ports[0]),
        }
        run_wrk(env, f"http://127.0.0.1:{ports[0]}/small", 1, 50, pin=False)  # warm-up
        samples: dict[str, list[dict]] = {k: [] for k in insts}
        names = list(insts)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                proc, port = insts[name]
                s = measure(env, proc, f"http://127.0.0.1:{port}/small", duration, 50, pin=False)
                samples[name].append(s)
                log(f"  workers round {r + 1} {name}: {s['rps']:,.0f} req/s")
        med = {k: summarize(v) for k, v in samples.items()}
        return {
            "note": f"HTTP keep-alive; proxies, wrk and nginx all unpinned on {len(all_cpus)} CPUs",
            "samples": samples,
            "median": med,
            "workers2_over_1": ratio(med["pylb workers 2"]["rps"], med["pylb workers 1"]["rps"]),
        }
    finally:
        for pid, cpus in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)
        w2.stop()
        del env.procs["pylb-w2"]


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE (hard too when root) towards `want`; children inherit it.
    Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tool_versions() -> str:
    out = []
    for argv in (["haproxy", "-v"], ["nginx", "-v"], ["wrk", "-v"]):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            first = (p.stdout or p.stderr).strip().splitlines()[0]
            out.append(first.split(" - ")[0].strip())
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out.append(f"{argv[0]} ?")
    out.append(f"Python {platform.python_version()}")
    return "; ".join(out)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024**2:.1f} GiB RAM"
    return f"{os.cpu_count()} CPUs ({model}){mem}, Linux {platform.release()}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    ap.add_argument("--idle", type=int, default=10000, help="idle connections (10000)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ALL_NAMES)}")
    ap.add_argument("--wrk-threads", type=int, default=0, help="default: one per load CPU")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument(
        "--pylb-cmd",
        default="",
        help="command that runs pylb (default: this Python -m pylb), e.g. to compare a "
        "modified copy: 'python /path/launcher.py'",
    )
    ns = ap.parse_args(argv)
    if ns.rounds < 1 or ns.duration <= 0 or ns.idle < 0:
        ap.error("--rounds >= 1, --duration > 0, --idle >= 0")
    ns.only = [x for x in ns.only.split(",") if x]
    bad = [x for x in ns.only if x not in ALL_NAMES]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; known: {ALL_NAMES}")
    return ns


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    for tool in ("haproxy", "nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is missing (make bench installs it as root)", file=sys.stderr)
            return 2
    os.environ["PATH"] += os.pathsep + "/usr/sbin:/sbin"
    # SIGINT explicitly: a bench started in the background of a script inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_sigterm)
    want = set(ns.only) if ns.only else set(ALL_NAMES)

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        proxy_cpus, load_cpus = [cpus[0]], cpus[1:]
        pinning = (
            f"proxy under test alone on CPU {cpus[0]}; wrk, nginx and the bench on CPU "
            f"{','.join(map(str, load_cpus))} (taskset)"
        )
        os.sched_setaffinity(0, load_cpus)  # this script (and its idle-connection sockets)
    else:
        proxy_cpus = load_cpus = None
        pinning = "1 CPU: everything unpinned (proxy, wrk and nginx share the CPU)"
    wrk_threads = ns.wrk_threads or (len(load_cpus) if load_cpus else 1)

    nofile = raise_nofile(4 * ns.idle + 4096)
    # HAProxy refuses to start when 2 x maxconn (+ a few) exceeds the open-files limit,
    # and the hard limit cannot be raised without CAP_SYS_RESOURCE: with 20000 (this
    # machine) maxconn is ~9950 and the idle scenario opens ~9850 connections.
    maxconn = min(ns.idle + 1000, (nofile - 100) // 2)
    idle_n = min(ns.idle, maxconn - 100)

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    tmp = Path(tempfile.mkdtemp(prefix="pylb-bench-"))
    env = Env(tmp, proxy_cpus, load_cpus, wrk_threads)
    if ns.pylb_cmd:
        env.pylb_cmd = shlex.split(ns.pylb_cmd)
    result: dict = {
        "meta": {
            "date": stamp,
            "command": " ".join(["perf/bench.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(),
            "versions": tool_versions(),
            "pinning": pinning,
            "rounds": ns.rounds,
            "duration": ns.duration,
            "wrk_threads": wrk_threads,
            "nofile": nofile,
            "maxconn": maxconn,
            "pylb_cmd": env.pylb_cmd,
        },
        "scenarios": {},
    }
    try:
        (tmp / "www").mkdir()
        with open(tmp / "www" / "big.bin", "wb") as f:
            block = bytes(range(256)) * 4096  # 1 MiB
            for _ in range(BIG_SIZE // len(block)):
                f.write(block)
        backends = free_ports(3)
        (tmp / "nginx.conf").write_text(nginx_conf(tmp, backends, maxconn, nofile))
        env.ports["nginx"] = {"servers": backends}  # type: ignore[dict-item]
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        env.procs["nginx"] = Proc(
            "nginx",
            [
                *env.pin(load_cpus),
                nginx_bin,
                "-p",
                str(tmp),
                "-e",
                str(tmp / "nginx-error.log"),
                "-c",
                str(tmp / "nginx.conf"),
            ],
            tmp / "nginx.log",
        )
        hp = free_ports(2)
        (tmp / "haproxy.cfg").write_text(haproxy_cfg(hp[0], hp[1], backends, maxconn))
        haproxy_bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
        env.procs["haproxy"] = Proc(
            "haproxy",
            [*env.pin(proxy_cpus), haproxy_bin, "-db", "-f", str(tmp / "haproxy.cfg")],
            tmp / "haproxy.log",
        )
        env.ports["haproxy"] = {"http": hp[0], "tcp": hp[1]}
        pp = free_ports(2)
        (tmp / "pylb.yaml").write_text(pylb_yaml(pp[0], pp[1], backends, maxconn, workers=1))
        env.procs["pylb"] = Proc(
            "pylb",
            [*env.pin(proxy_cpus), *env.pylb_cmd, "run", "-c", str(tmp / "pylb.yaml")],
            tmp / "pylb.log",
        )
        env.ports["pylb"] = {"http": pp[0], "tcp": pp[1]}
        wait_ready(env.procs["nginx"], backends)
        for p in PROXIES:
            wait_ready(env.procs[p], [env.ports[p]["http"], env.ports[p]["tcp"]])
        log(f"bench: {result['meta']['machine']}; {pinning}; tmp {tmp}")

        if "idle" in want and idle_n > 0:
            log(f"idle: {idle_n} keep-alive connections per proxy")
            result["scenarios"]["idle"] = run_idle(env, idle_n, log)
        elif "idle" in want:
            result["scenarios"]["idle"] = {"skipped": f"open-files limit {nofile} too low"}

        for p in PROXIES:  # warm-up: pools, allocator, caches
            run_wrk(env, f"http://127.0.0.1:{env.ports[p]['http']}/small", 1, 50)
            run_wrk(env, f"http://127.0.0.1:{env.ports[p]['tcp']}/small", 1, 50)

        for sc in SCENARIOS:
            if sc.name in want:
                log(f"{sc.name}: {sc.what}")
                result["scenarios"][sc.name] = run_scenario(env, sc, ns.rounds, ns.duration, log)
        if "workers" in want:
            if len(cpus) >= 2:
                log("workers: pylb workers 2 vs 1, HTTP keep-alive, unpinned")
                result["scenarios"]["workers"] = run_workers(
                    env, ns.rounds, ns.duration, maxconn, log
                )
            else:
                result["scenarios"]["workers"] = {"skipped": "1 CPU: a second worker has no CPU"}
        if "tls" in want:
            result["scenarios"]["tls"] = {"skipped": "TLS termination is not implemented yet"}
    except KeyboardInterrupt:
        log("bench: interrupted, stopping everything")
        return 130
    finally:
        for name in list(env.procs)[::-1]:
            env.procs[name].stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ratios_by = {k: v.get("ratio", {}) for k, v in result["scenarios"].items()}
    result["targets"] = judge(TARGETS, ratios_by)
    result["log"] = log_lines
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(result)
    (out / f"bench-{stamp}.md").write_text(md)
    (out / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2, default=_json_default))
    print()
    print(md)
    print(f"written: {out / f'bench-{stamp}.md'} and .json")
    return 0


def _json_default(o: object) -> object:
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)  # type: ignore[call-overload]
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.exit(main())
