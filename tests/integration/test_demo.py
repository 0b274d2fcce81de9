"""`pylb demo` (and `make run`, which runs it): starts, answers through the proxy, rotates
over the three demo backends, stops with exit code 0 on SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from pylb.demo import start_backends
from tests.integration.conftest_process import (
    REPO,
    Proc,
    http_get,
    make_env,
    pylb,
    session_pids,
)

URL = re.compile(r"service at http://127\.0\.0\.1:(\d+)/")


def servers_seen(port: int, n: int) -> list[str]:
    out = []
    for _ in range(n):
        status, body = http_get(port)
        assert status == 200
        out.append(json.loads(body)["server"])
    return out


def check_demo_answers(port: int) -> None:
    names = servers_seen(port, 6)
    # round robin over three equal servers: each once per turn, the same order every turn
    assert sorted(names[:3]) == ["demo1", "demo2", "demo3"]
    assert names[3:] == names[:3]


def test_demo_runs_answers_and_stops_on_sigint():
    with pylb("demo", "--port", "0") as p:
        line = p.wait_output("service at http://", 20)
        assert "backends: demo1 127.0.0.1:" in line
        p.wait_output("Ctrl-C to stop")
        port = int(URL.search(line).group(1))
        check_demo_answers(port)
        p.signal(signal.SIGINT)
        assert p.wait(20) == 0
        assert "pylb demo: stopped" in p.stdout
        assert session_pids(p.pid) == []


def test_demo_sigterm_exits_0():
    with pylb("demo", "--port", "0") as p:
        p.wait_output("Ctrl-C to stop", 20)
        p.signal(signal.SIGTERM)
        assert p.wait(20) == 0


async def test_demo_backends_keep_alive_and_pipelining():
    """The demo backends also stand behind load tests: keep-alive and pipelined requests
    are answered in order on one connection."""
    backends = await start_backends(("b1",), "127.0.0.1", None)
    try:
        addr = backends[0].address
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        writer.write(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 5)  # until the backend closes
        writer.close()
        bodies = [json.loads(m) for m in re.findall(rb'\{"server"[^\n]*\}\n', data)]
        assert [b["path"] for b in bodies] == ["/one", "/two", "/three"]
        assert all(b["server"] == "b1" for b in bodies)
        assert data.count(b"HTTP/1.1 200 OK") == 3
    finally:
        for b in backends:
            b.close()


def make_run_ready() -> bool:
    """`make run` without installing anything: the venv and its stamp are up to date
    (true after `make test`, which CI runs; a fresh clone would install first)."""
    if shutil.which("make") is None:
        return False
    r = subprocess.run(
        ["make", "-q", ".venv/.installed"],
        cwd=REPO,
        env=make_env(),
        capture_output=True,
        check=False,
    )
    return r.returncode == 0 and (REPO / ".venv" / "bin" / "pylb").exists()


@pytest.mark.skipif(not make_run_ready(), reason="make run would install the package first")
def test_make_run_starts_and_answers():
    p = Proc(["make", "run"], cwd=REPO, env=make_env())
    try:
        line = p.wait_output("service at http://", 30)
        port = int(URL.search(line).group(1))
        check_demo_answers(port)
        # pylb is make's child: Ctrl-C in a terminal signals the whole process group
        os.killpg(p.pid, signal.SIGINT)
        p.wait(20)  # make's own exit code after an interrupt is make's business
        assert "pylb demo: stopped" in p.stdout
        assert session_pids(p.pid) == []
    finally:
        p.kill_all()
