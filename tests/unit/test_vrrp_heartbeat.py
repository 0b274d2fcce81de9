"""The master's heartbeat to the speaker: `show health` answers, the non-blocking poll of
worker 0 over a real unix socket, and what goes down the pipe."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pylb.config.load import load_config_text
from pylb.proxy.backend import AdminState, Backend
from pylb.vrrp.heartbeat import POLL_TIMEOUT, Heartbeat, health_answer, parse_health
from pylb.vrrp.track import parse_heartbeat

CONF = """
listen:
  web:
    bind: "127.0.0.1:8080"
    critical: true
    health: {type: tcp}
    servers: [{name: a, address: "127.0.0.1:9000"}]
  db:
    bind: "127.0.0.1:8081"
    servers: [{name: b, address: "127.0.0.1:9001"}]
"""


def backends() -> list[Backend]:
    cfg = load_config_text(CONF)
    return [Backend(lst) for lst in cfg.listens]


def test_health_answer_names_critical_listeners_without_server() -> None:
    bks = backends()
    assert parse_health(health_answer(bks)) == ()
    bks[0].servers[0].admin = AdminState.MAINT
    bks[1].servers[0].admin = AdminState.MAINT  # not critical: not reported
    doc = json.loads(health_answer(bks))
    assert doc["critical_down"] == ["web"]
    assert doc["listeners"]["db"]["active_up"] == 0 and not doc["listeners"]["db"]["critical"]
    assert parse_health(health_answer(bks)) == ("web",)


@pytest.mark.parametrize("text", ["", "Unknown command.\n", "[]", '{"critical_down": [1]}'])
def test_parse_health_rejects_what_is_not_an_answer(text: str) -> None:
    assert parse_health(text) is None


@pytest.fixture
def worker0(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A stand-in control socket answering `show health` with a settable answer."""
    path = str(tmp_path / "g0-w0.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    answer = ['{"critical_down": ["web"]}\n']
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    data += chunk
                if data.strip() == b"show health":
                    conn.sendall(answer[0].encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path, answer
    finally:
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        t.join(5)


def read_beats(fd: int) -> list[tuple[bool, tuple[str, ...]]]:
    data = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return [hb for line in data.splitlines() if (hb := parse_heartbeat(line)) is not None]


def drive(hb: Heartbeat, now: float) -> None:
    """What the master's select() loop does until the poll in flight is answered."""
    while hb.poll is not None:
        ready, _, _ = select.select(hb.read_fds(), [], [], 2.0)
        assert ready, "no answer"
        for fd in ready:
            hb.on_readable(fd)
        hb.tick(now, True, None)


def test_heartbeat_polls_worker0_and_sends_a_change_at_once(worker0) -> None:
    path, answer = worker0
    r, w = os.pipe()
    os.set_blocking(w, False)
    hb = Heartbeat(w, now=100.0)
    try:
        hb.tick(100.0, True, path)  # due: a beat with what is known (nothing), and a poll
        assert read_beats(r) == [(True, ())]
        drive(hb, 100.1)
        # the answer changed critical_down: sent at once, not a second later
        assert read_beats(r) == [(True, ("web",))]
        hb.tick(100.5, True, path)  # not due yet: nothing
        assert read_beats(r) == [] and hb.poll is None
        answer[0] = '{"critical_down": []}\n'
        hb.tick(101.0, False, path)  # a worker died: healthy false
        assert read_beats(r) == [(False, ("web",))]
        drive(hb, 101.1)
        assert read_beats(r) == [(False, ())]
    finally:
        hb.close()
        os.close(r)


def test_an_unanswered_poll_keeps_the_last_known_state(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(8)  # accepts (in the kernel) but never answers
    r, w = os.pipe()
    os.set_blocking(w, False)
    hb = Heartbeat(w, now=0.0)
    hb.critical_down = ("web",)
    try:
        hb.tick(0.0, True, path)
        assert hb.poll is not None
        hb.tick(POLL_TIMEOUT + 0.01, True, path)  # overdue: dropped, not waited for
        assert hb.poll is None and hb.critical_down == ("web",)
        assert read_beats(r) == [(True, ("web",))]
        hb.tick(1.0, True, str(tmp_path / "missing.sock"))  # nobody there: no poll, no error
        assert hb.poll is None
        assert read_beats(r) == [(True, ("web",))]
    finally:
        hb.close()
        mute.close()
        os.close(r)
