"""writer-pin through `pylb run` with `workers: 2`: every worker of the node uses the same
writer at every moment that matters (docs/galera.md, "Workers").

The checks run every 30 s, so within a test only the sibling sync can tell a worker that
another worker saw the writer die: one refused connect in ONE worker (passive mark-down)
must move the sessions and the new connections of BOTH workers to the same new server.
"""

from __future__ import annotations

import contextlib
import signal
import time

from tests.integration.conftest_process import free_port, pylb, wait_for
from tests.integration.writerpin_helpers import (
    ctl,
    is_closed,
    named_backends,
    open_session,
    server_of,
    upstream_sessions,
    writer_config,
    writer_of,
)

SESSIONS = 24


def test_two_workers_move_together_on_failure_manual_switch_and_reload(tmp_path):
    cfg, admin, port = tmp_path / "pylb.yaml", tmp_path / "admin.sock", free_port()
    with named_backends("a", "b", "c") as (a, b, c):
        writer_config(
            cfg,
            port=port,
            servers=[("a", a.port), ("b", b.port), ("c", c.port)],
            admin=admin,
            workers=2,
        )
        with pylb("run", "-c", str(cfg)) as p, contextlib.ExitStack() as stack:
            p.wait_output("Loading success")
            workers = wait_for(lambda: (lambda c: c if len(c) == 2 else None)(p.children()))
            sessions = []
            for _ in range(SESSIONS):
                s, name = open_session(port)
                stack.callback(s.close)
                sessions.append(s)
                assert name == "a"
            # both workers hold sessions to a (SO_REUSEPORT spread them)
            per_worker = wait_for(
                lambda: (lambda n: n if sum(n) == SESSIONS else None)(
                    [upstream_sessions(w, a.port) for w in workers]
                ),
                5,
                "sessions on a",
            )
            assert all(per_worker), f"sessions per worker on a: {per_worker}"

            # a's port dies; the next client connect fails in one worker only
            a.stop_listening()
            t0 = time.monotonic()
            assert server_of(port) == "b"
            # ... and the other worker followed at once: every session on a is closed
            wait_for(lambda: all(is_closed(s) for s in sessions), 2, "sessions on a closed")
            took = time.monotonic() - t0
            print(f"\nall {SESSIONS} sessions on a closed {took:.3f} s after the kill")
            assert [upstream_sessions(w, a.port) for w in workers] == [0, 0]
            new = []
            for _ in range(SESSIONS):
                s, name = open_session(port)
                stack.callback(s.close)
                new.append(s)
                assert name == "b"
            assert all(upstream_sessions(w, b.port) for w in workers)
            assert writer_of(admin) == "b"

            # manual switch through the admin socket: both workers move to c
            out = ctl(admin, "set", "writer", "mysql", "c")
            assert "writer is now c" in out
            wait_for(lambda: all(is_closed(s) for s in new), 2, "sessions on b closed")
            assert {server_of(port) for _ in range(SESSIONS)} == {"c"}
            wait_for(lambda: [upstream_sessions(w, b.port) for w in workers] == [0, 0], 2)

            # a is back (its checks bring it up); a reload keeps c (no failback to a)
            a.start()
            p.signal(signal.SIGHUP)
            p.wait_output("Reload done")
            new_workers = wait_for(
                lambda: (lambda ch: ch if len(ch) == 2 and not set(ch) & set(workers) else None)(
                    p.children()
                ),
                10,
                "new generation alone",
            )
            assert {server_of(port) for _ in range(SESSIONS)} == {"c"}
            assert writer_of(admin) == "c"
            assert "Writer of mysql restored: c" in p.stdout
            assert len(new_workers) == 2


def test_missing_password_file_is_a_startup_error_and_a_rejected_reload(tmp_path):
    """The galera check's password_file is read by the master before it forks (and again
    at a reload): a missing one is reported at its FILE:LINE:COL, not as a worker crash
    loop."""
    cfg, admin, port = tmp_path / "pylb.yaml", tmp_path / "admin.sock", free_port()
    missing = tmp_path / "nope.pw"
    with named_backends("a", "b") as (a, b):
        writer_config(cfg, port=port, servers=[("a", a.port), ("b", b.port)], admin=admin)
        good = cfg.read_text()
        bad = good.replace(
            "health: {type: tcp,", f"health: {{type: galera, user: u, password_file: {missing},"
        )
        line = next(i for i, t in enumerate(bad.splitlines(), 1) if "password_file: " in t)
        col = bad.splitlines()[line - 1].index(str(missing)) + 1
        where = f"{cfg}:{line}:{col}: error: listen.mysql.health.password_file: password_file"
        cfg.write_text(bad)
        with pylb("run", "-c", str(cfg)) as p:
            assert p.wait(15) == 1
            assert f"{where} {missing}: no such file" in p.stderr
            assert "Started worker" not in p.stdout + p.stderr
        cfg.write_text(good)
        with pylb("run", "-c", str(cfg)) as p:
            p.wait_output("Loading success")
            cfg.write_text(bad)
            p.signal(signal.SIGHUP)
            p.wait_output("Reload rejected")
            p.wait_output(f"{where} {missing}: no such file")
            assert server_of(port) == "a"


def test_a_draining_generation_follows_the_new_one(tmp_path):
    """After a reload the old worker still relays its open sessions (for up to
    hard_stop_after): a writer change made in the new generation must close them too,
    or two servers would take writes through this node."""
    cfg, admin, port = tmp_path / "pylb.yaml", tmp_path / "admin.sock", free_port()
    with named_backends("a", "b") as (a, b):
        writer_config(
            cfg,
            port=port,
            servers=[("a", a.port), ("b", b.port)],
            admin=admin,
            hard_stop_after="60s",
        )
        with pylb("run", "-c", str(cfg)) as p:
            p.wait_output("Loading success")
            old = wait_for(lambda: (lambda c: c if len(c) == 1 else None)(p.children()))
            s, name = open_session(port)
            with s:
                assert name == "a"
                p.signal(signal.SIGHUP)
                p.wait_output("Reload done")
                assert old[0] in p.children()  # still draining: it holds our session
                ctl(admin, "set", "writer", "mysql", "b")
                wait_for(lambda: is_closed(s), 3, "the old generation's session on a closed")
                assert "reason: peer); 1 sessions closed on a" in p.stdout
            assert server_of(port) == "b"
