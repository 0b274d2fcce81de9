#!/usr/bin/env python3
"""Instructions per request of the pylb proxy process, counted by callgrind: a repeatable A/B.

    .venv/bin/python perf/instructions.py [--mode http|tcp|http_close|both|all]
        [--n1 1000 --n2 3000] [--conns 10] [--tree PATH ...] [--debug]

Why: wall-clock figures (perf/bench.py) move by 10-25 % between runs on these shared VMs,
so a data-plane change worth 2 % cannot be seen there. `valgrind --tool=callgrind` counts
the user-space instructions of one process, which does not depend on what else the
machine is doing: repeated runs agree within about 0.3 %.

What runs, per mode and tree, all on loopback: one load process (a backend answering like
nginx's /small in perf/bench.py, byte for byte with a fixed Date, and a client sending
wrk's request over `--conns` connections, exactly N requests in total) and one proxy
process (HttpFrontend or TcpFrontend built in-process from the tree's
tests.integration.http_helpers.listen_conf, as the integration tests build it), the
latter under callgrind. It runs with N1 and then N2 requests:
(I(N2) - I(N1)) / (N2 - N1) is the proxy's instructions per request, with interpreter
start-up, imports and shutdown cancelled out. A warm-up run without valgrind comes first
(the tree's .pyc files exist afterwards, and every answer is checked to be a 200).

Modes: `http` keep-alive (wrk's default), `http_close` (`Connection: close`, one client
connection per request, as the bench's http_close), `tcp` (the same keep-alive HTTP load
through the TCP relay); `both` = http + tcp, `all` = the three.

Trees: each `--tree` is a checkout of this repository (default: the one this script is
in); its own `pylb` and test helpers are imported (the tree is put first on sys.path of
the proxy process, and the tool checks that `pylb.__file__` is inside it). Several trees
are an A/B in one run, e.g. `git worktree add /tmp/prev HEAD~1` then
`--tree . --tree /tmp/prev`; ratios are to the first tree.

What it does not see: the kernel (send/recv, epoll: `sys` time in the bench), and cycles
(an instruction that misses the cache counts as one). It measures the Python data plane,
which is what most of our changes touch; confirm large wins with perf/bench.py.

Every child runs in its own session with a parent-death signal (perf/bench.py's
`_child_setup`), every wait has a deadline, and everything started is stopped at the end,
on errors and on Ctrl-C / SIGTERM. The pure parts (valgrind's summary line, the
arithmetic, the table, the nginx-like answers) are unit-tested in
tests/unit/test_perf_instructions.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()
sys.path.insert(0, str(ROOT))

from perf import bench  # noqa: E402  # stdlib only: no pylb is imported before the tree's

# mode -> (listener kind, Connection: close on every request)
MODES: dict[str, tuple[str, bool]] = {
    "http": ("http", False),
    "tcp": ("tcp", False),
    "http_close": ("http", True),
}
MODE_GROUPS: dict[str, tuple[str, ...]] = {
    "both": ("http", "tcp"),
    "all": ("http", "tcp", "http_close"),
}
SMALL_BODY = bench.SMALL_BODY.encode()  # 17 bytes
DATE = b"Thu, 26 Nov 2026 13:09:46 GMT"  # fixed: every run answers the same bytes
WARMUP_REQUESTS = 20

# ------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------

_COLLECTED = re.compile(r"^==\d+== Collected : ([\d,]+)\s*$", re.M)


def parse_collected(stderr: str) -> int:
    """The total instruction count of callgrind's summary (`==PID== Collected : 1,234`).
    Raises ValueError when it is missing: the process died before valgrind's summary,
    so there is no count to trust."""
    found = _COLLECTED.findall(stderr)
    if not found:
        raise ValueError("no 'Collected :' line in valgrind's output")
    return int(found[-1].replace(",", ""))


def per_request(i1: int, n1: int, i2: int, n2: int) -> float:
    """(I(N2) - I(N1)) / (N2 - N1): what start-up and shutdown cost is in both runs."""
    if n2 <= n1:
        raise ValueError(f"n2 ({n2}) must be larger than n1 ({n1})")
    return (i2 - i1) / (n2 - n1)


def expand_modes(names: Sequence[str]) -> list[str]:
    """`both`/`all` and repeated --mode into the list of modes, in order, once each."""
    out: list[str] = []
    for name in names:
        for m in MODE_GROUPS.get(name, (name,)):
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r} (known: {', '.join(MODES)}, both, all)")
            if m not in out:
                out.append(m)
    return out


@dataclass(frozen=True, slots=True)
class Row:
    mode: str
    tree: str
    per_request: float


def render_table(rows: Sequence[Row]) -> str:
    """The markdown table; the ratio is to the first tree measured in the same mode, the
    A of the A/B."""
    first: dict[str, float] = {}
    lines = [
        "| mode | tree | instructions/request | ratio |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        base = first.setdefault(r.mode, r.per_request)
        ratio = f"{r.per_request / base:.3f}" if base else "-"
        lines.append(f"| {r.mode} | {r.tree} | {r.per_request:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def request(port: int, close: bool) -> bytes:
    """What wrk sends for http://127.0.0.1:PORT/small (with -H 'Connection: close')."""
    extra = b"Connection: close\r\n" if close else b""
    return b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (port, extra)


def response(close: bool) -> bytes:
    """nginx 1.22's answer to /small in perf/bench.py's config (return 200 "..."), with
    the Connection field it sends for a keep-alive or a closing request."""
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: " + DATE + b"\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: %s\r\n\r\n" % (len(SMALL_BODY), b"close" if close else b"keep-alive")
    ) + SMALL_BODY


def split_heads(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete request heads in `buf` (the requests have no body) and the incomplete
    rest: the proxy may pipeline or split a head across reads."""
    heads = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return heads, buf
        heads.append(buf[: end + 4])
        buf = buf[end + 4 :]


def wants_close(head: bytes) -> bool:
    """Whether nginx would close after answering this request head (RFC 9112 9.3)."""
    lower = head.lower()
    if b"\r\nconnection: close" in lower or b"\r\nconnection:close" in lower:
        return True
    http10 = head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0")
    return http10 and b"keep-alive" not in lower


def split_response_head(head: bytes) -> tuple[int, int | None]:
    """(status, Content-Length or None) of a response head ending with CRLF CRLF."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, length


def default_timeout(n: int) -> float:
    """A run's deadline: callgrind slows Python ~50x (start-up with imports ~10 s, a
    request ~5 ms on these VMs), and this is 4 to 10 times that."""
    return 120.0 + n * 0.05


# ------------------------------------------------------------------------------------------
# The children: the load (client + backend) and the proxy
# ------------------------------------------------------------------------------------------


class NginxSmall(asyncio.Protocol):
    """The backend: answers every request head like nginx's /small, closes when asked."""

    def __init__(self) -> None:
        self.buf = b""
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]  # a TCP server: always a Transport

    def data_received(self, data: bytes) -> None:
        assert self.t is not None
        heads, self.buf = split_heads(self.buf + data)
        out = []
        for head in heads:
            close = wants_close(head)
            out.append(RESPONSES[close])
            if close:
                self.t.write(b"".join(out))
                self.t.close()
                return
        if out:
            self.t.write(b"".join(out))


RESPONSES = {False: response(False), True: response(True)}


@dataclass(slots=True)
class LoadState:
    left: int  # requests not yet sent
    ok: int = 0  # 200 with the expected body
    bad: int = 0


async def _slot(st: LoadState, port: int, close: bool) -> None:
    """One of the C concurrent clients: sends a request, reads the whole answer, sends the
    next one (on the same connection, or a new one with Connection: close)."""
    req = request(port, close)
    writer: asyncio.StreamWriter | None = None
    try:
        while st.left > 0:
            st.left -= 1
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(req)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                status, length = split_response_head(head)
                body = await reader.readexactly(length or 0)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
                st.bad += 1
                writer.close()
                writer = None
                continue
            if status == 200 and body == SMALL_BODY:
                st.ok += 1
            else:
                st.bad += 1
            if close or wants_close(head):
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def _load(n: int, conns: int, close: bool) -> LoadState:
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(NginxSmall, "127.0.0.1", 0)
    print(f"backend {backend.sockets[0].getsockname()[1]}", flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    port = int((await stdin.readline()).split()[-1])  # "port N" from the parent
    st = LoadState(left=n)
    await asyncio.gather(*(_slot(st, port, close) for _ in range(conns)))
    print(f"done ok={st.ok} bad={st.bad}", flush=True)
    await stdin.read()  # the parent closes our stdin once the proxy has stopped
    backend.close()
    return st


def load_main(argv: Sequence[str]) -> int:
    """`instructions.py _load --n N --conns C [--close] --timeout S` (started by main)."""
    ap = argparse.ArgumentParser(prog="instructions.py _load")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--close", action="store_true")
    ap.add_argument("--timeout", type=float, required=True)
    ns = ap.parse_args(argv)
    import uvloop

    async def bounded() -> LoadState:
        async with asyncio.timeout(ns.timeout):
            return await _load(ns.n, ns.conns, ns.close)

    st = uvloop.run(bounded())
    return 0 if st.bad == 0 else 1


def proxy_main(argv: Sequence[str]) -> int:
    """`instructions.py _proxy --tree T --kind http|tcp --backend PORT --timeout S`: the
    measured process. Imports the tree's pylb and serves until stdin closes."""
    ap = argparse.ArgumentParser(prog="instructions.py _proxy")
    ap.add_argument("--tree", required=True)
    ap.add_argument("--kind", choices=("http", "tcp"), required=True)
    ap.add_argument("--backend", type=int, required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ns = ap.parse_args(argv)
    sys.path.insert(0, str(Path(ns.tree).resolve()))  # the tree's pylb wins over the venv's
    import dataclasses

    import uvloop

    import pylb
    from pylb.config.model import Address
    from pylb.proxy.accesslog import AccessLog
    from pylb.proxy.backend import Backend
    from pylb.proxy.frontend import HttpFrontend
    from pylb.proxy.state import ListenContext, WorkerState
    from tests.integration import http_helpers

    print(f"pylb {pylb.__file__} {http_helpers.__file__}", flush=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        conf = http_helpers.listen_conf([Address("127.0.0.1", ns.backend)])
        proto: type = HttpFrontend
        if ns.kind == "tcp":
            from pylb.proxy.tcp import TcpFrontend  # only here: older trees may lack it

            conf = dataclasses.replace(conf, mode="tcp")
            proto = TcpFrontend
        worker = WorkerState(loop=loop, access_log=AccessLog())  # no access log, as the bench
        ctx = ListenContext(conf, Backend(conf), worker)
        server = await loop.create_server(lambda: proto(ctx), "127.0.0.1", 0)
        stop = loop.create_future()

        def on_stdin() -> None:
            if not os.read(sys.stdin.fileno(), 4096) and not stop.done():
                stop.set_result(None)

        loop.add_reader(sys.stdin.fileno(), on_stdin)  # no thread: nothing else runs here
        loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        async with asyncio.timeout(ns.timeout):
            await stop
        loop.remove_reader(sys.stdin.fileno())
        server.close()

    uvloop.run(serve())
    return 0


# ------------------------------------------------------------------------------------------
# The parent
# ------------------------------------------------------------------------------------------


class Child:
    """A child of this tool: its own session (Ctrl-C reaches the tool only, which stops it),
    killed if the tool dies (bench._child_setup), stdout read line by line with a deadline,
    stderr kept in a file (valgrind's summary is there)."""

    def __init__(self, name: str, argv: list[str], tmp: Path, env: dict | None = None) -> None:
        self.name = name
        self.err = tmp / f"{name}.stderr"
        self._fh = open(self.err, "wb")  # noqa: SIM115  # closed in stop()
        self._buf = b""
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._fh,
            start_new_session=True,
            preexec_fn=bench._child_setup,
            cwd=str(tmp),
            env=env,
        )

    def stderr_text(self) -> str:
        try:
            return self.err.read_text(errors="replace")
        except OSError:
            return ""

    def _fail(self, what: str) -> RuntimeError:
        tail = "\n".join(self.stderr_text().splitlines()[-20:])
        return RuntimeError(f"{self.name}: {what}\n{tail}")

    def readline(self, deadline: float) -> str:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()  # read raw: the file object's buffer stays unused
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail("no answer before the deadline")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.popen.wait(5)
                    raise self._fail(f"exited (status {self.popen.returncode})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def finish(self, deadline: float) -> int:
        """Close its stdin (the signal to exit) and wait for its exit status."""
        assert self.popen.stdin is not None
        with contextlib.suppress(OSError):
            self.popen.stdin.close()
        try:
            return self.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise self._fail("did not exit before the deadline") from None

    def stop(self) -> None:
        """Idempotent: whatever is left of its session is killed."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        for f in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        self._fh.close()


def run_once(
    tree: Path,
    mode: str,
    n: int,
    conns: int,
    tmp: Path,
    *,
    valgrind: bool,
    timeout: float,
    cg_out: Path | None = None,
    debug: bool = False,
) -> int | None:
    """One load of `n` requests through the tree's proxy; callgrind's instruction count of
    the proxy process (None without valgrind). Raises RuntimeError when a child fails, an
    answer is not nginx's 200 or a deadline passes."""
    kind, close = MODES[mode]
    deadline = time.monotonic() + timeout
    py = sys.executable
    to = f"{timeout:g}"
    load_argv = [py, str(SELF), "_load", "--n", str(n), "--conns", str(conns), "--timeout", to]
    children: list[Child] = []
    try:
        load = Child("load", [*load_argv, *(["--close"] if close else [])], tmp)
        children.append(load)
        bport = int(load.readline(deadline).split()[-1])
        argv = [py, str(SELF), "_proxy", "--tree", str(tree), "--kind", kind]
        argv += ["--backend", str(bport), "--timeout", to]
        if valgrind:
            out = str(cg_out) if cg_out is not None else "/dev/null"
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
        env = dict(os.environ, PYTHONHASHSEED="0")  # same dict layouts in every run
        env.pop("PYTHONPATH", None)
        proxy = Child("proxy", argv, tmp, env)
        children.append(proxy)
        where = proxy.readline(deadline).split()
        if debug:
            print(f"  proxy imports {where[1]} and {where[2]}", file=sys.stderr)
        for f in where[1:]:
            if not Path(f).resolve().is_relative_to(tree):
                raise RuntimeError(f"the proxy imported {f}, not the one of {tree}")
        pport = int(proxy.readline(deadline).split()[-1])
        load.send(f"port {pport}")
        done = load.readline(deadline)  # "done ok=N bad=M"
        if done != f"done ok={n} bad=0":
            raise RuntimeError(f"{mode}: {n} requests sent, the load reports {done!r}")
        status = proxy.finish(deadline)
        if status != 0:
            raise proxy._fail(f"exited with status {status}")
        load.finish(deadline)
        if not valgrind:
            return None
        try:
            return parse_collected(proxy.stderr_text())
        except ValueError as e:
            raise proxy._fail(str(e)) from None
    finally:
        for c in children[::-1]:
            c.stop()


def tree_label(tree: Path) -> str:
    """The path and `git describe --dirty` of the tree: what an A/B compared. Optional
    locks off, so that the lead's concurrent git commands never meet our index.lock."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(tree), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return str(tree)
    rev = out.stdout.strip()
    return f"{tree} ({rev})" if out.returncode == 0 and rev else str(tree)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mode",
        action="append",
        choices=[*MODES, *MODE_GROUPS],
        help="http, tcp, http_close, both (http + tcp, the default) or all; repeatable",
    )
    ap.add_argument("--n1", type=int, default=1000, help="requests of the first run")
    ap.add_argument("--n2", type=int, default=3000, help="requests of the second run")
    ap.add_argument("--conns", type=int, default=10, help="concurrent client connections")
    ap.add_argument(
        "--tree",
        action="append",
        type=Path,
        help="a checkout of pylb to measure (default: this one); repeat for an A/B",
    )
    ap.add_argument(
        "--callgrind-out",
        type=Path,
        help="keep the callgrind.out files of the N2 runs here (for callgrind_annotate)",
    )
    ap.add_argument("--debug", action="store_true", help="show which pylb the proxy imports")
    ns = ap.parse_args(argv)
    ns.mode = expand_modes(ns.mode or ["both"])
    ns.tree = [t.resolve() for t in (ns.tree or [ROOT])]
    if not 0 < ns.n1 < ns.n2 or ns.conns < 1:
        ap.error("need 0 < n1 < n2 and conns >= 1")
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_load"]:
        return load_main(args[1:])
    if args[:1] == ["_proxy"]:
        return proxy_main(args[1:])
    ns = parse_args(args)
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is missing (apt-get install valgrind)", file=sys.stderr)
        return 2
    for tree in ns.tree:
        if not (tree / "pylb" / "__init__.py").exists():
            print(f"instructions: {tree} is not a pylb checkout", file=sys.stderr)
            return 2
        if not (tree / "tests" / "integration" / "http_helpers.py").exists():
            print(f"instructions: {tree} has no tests/integration/http_helpers.py", file=sys.stderr)
            return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, bench._on_sigterm)  # -> KeyboardInterrupt: children are stopped
    if ns.callgrind_out is not None:
        ns.callgrind_out.mkdir(parents=True, exist_ok=True)
    labels = {tree: tree_label(tree) for tree in ns.tree}
    tmp = Path(tempfile.mkdtemp(prefix="pylb-instructions-"))
    started = time.monotonic()
    rows = []
    try:
        for mode in ns.mode:
            for i, tree in enumerate(ns.tree):
                t = default_timeout(WARMUP_REQUESTS)
                run_once(tree, mode, WARMUP_REQUESTS, ns.conns, tmp, valgrind=False, timeout=t)
                counts = []
                for n in (ns.n1, ns.n2):
                    cg_out = None
                    if ns.callgrind_out is not None and n == ns.n2:
                        cg_out = ns.callgrind_out.resolve() / f"callgrind.out.{mode}.{i}"
                    t0 = time.monotonic()
                    count = run_once(
                        tree, mode, n, ns.conns, tmp, valgrind=True,
                        timeout=default_timeout(n), cg_out=cg_out, debug=ns.debug,
                    )  # fmt: skip
                    assert count is not None
                    counts.append(count)
                    print(
                        f"{mode} {labels[tree]}: {n} requests, {count:,} instructions"
                        f" ({time.monotonic() - t0:.0f} s)",
                        file=sys.stderr,
                    )
                pr = per_request(counts[0], ns.n1, counts[1], ns.n2)
                rows.append(Row(mode, labels[tree], pr))
        print(render_table(rows))
        print(
            f"proxy process only, callgrind; n1={ns.n1} n2={ns.n2} conns={ns.conns}; "
            f"{time.monotonic() - started:.0f} s wall"
        )
        return 0
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        print(f"instructions: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
