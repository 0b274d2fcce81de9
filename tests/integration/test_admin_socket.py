"""The runtime API over a real unix socket: permissions, stale sockets, commands changing
what a real proxy does (drain: no new sessions, the open one finishes), and the
`pylb ctl` client."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import stat
from collections.abc import AsyncIterator

import pytest

from pylb.admin.client import run_ctl
from pylb.admin.socket import bind_unix_socket, start_admin_socket
from pylb.proxy.backend import AdminState
from tests.integration.tcp_helpers import (
    BackendServer,
    Echo,
    connect_client,
    proxy_with,
    wait_for,
)
from tests.unit.admin_helpers import Provider, backends, listen


async def ask(path: str, line: bytes) -> str:
    r, w = await asyncio.open_unix_connection(path)
    try:
        w.write(line)
        w.write_eof()  # as `socat` does at the end of its input
        await w.drain()
        return (await asyncio.wait_for(r.read(), 5)).decode()  # the server closes
    finally:
        w.close()


async def ctl(path: str, command: str) -> tuple[int, str, str]:
    """`pylb ctl` is blocking: run it in a thread while the loop serves the socket."""
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(run_ctl, path, command, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


@contextlib.asynccontextmanager
async def admin(path: str, provider) -> AsyncIterator[None]:
    server = await start_admin_socket(asyncio.get_running_loop(), path, provider)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def test_socket_mode_parent_dir_and_cleanup(tmp_path):
    path = str(tmp_path / "run" / "pylb" / "admin.sock")
    async with admin(path, Provider(backends())):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o007 == 0
        assert (await ask(path, b"show info\n")).startswith("Name: pylb\n")
        assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []
    assert not os.path.exists(path)


async def test_stale_socket_is_replaced_regular_file_is_not(tmp_path):
    path = str(tmp_path / "admin.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # left behind by a killed process: nobody listens
    stale.close()
    async with admin(path, Provider(backends())):
        assert "Name: pylb" in await ask(path, b"show info\n")
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")
    with pytest.raises(FileExistsError):
        bind_unix_socket(str(other))
    assert other.read_text() == "keep me"


async def test_commands_change_state(tmp_path):
    path = str(tmp_path / "admin.sock")
    prov = Provider(backends(listen("api")))
    be = prov.backends[0]
    async with admin(path, prov):
        assert await ask(path, b"disable server api/s1\n") == "\n"
        assert be.server("s1").admin is AdminState.MAINT
        out = await ask(path, b"set server api/s2 state drain; show stat\n")
        assert be.server("s2").admin is AdminState.DRAIN
        assert out.startswith("\n# pxname,svname,")
        assert ",s1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT," in out
        assert ",DRAIN," in out
        assert await ask(path, b"set server api/s9 weight 3\n") == "No such server.\n\n"
        # no newline: EOF ends the command (`printf 'show info' | socat`)
        assert (await ask(path, b"enable server api/s1")) == "\n"
        assert be.server("s1").admin is AdminState.READY

        rc, out, err = await ctl(path, "set server api/s2 weight 7")
        assert (rc, out, err) == (0, "", "")
        assert be.server("s2").weight == 7
        rc, out, _ = await ctl(path, "show servers state api")
        assert rc == 0 and out.splitlines()[0] == "1"
        rc, out, _ = await ctl(path, "disable server nope/s1")
        assert (rc, out) == (1, "No such backend.\n")
    rc, out, err = await ctl(path, "show info")
    assert rc == 2 and "cannot talk to" in err


async def test_drain_on_a_live_proxy(tmp_path):
    """drain on a live TCP proxy: the session open on s1 keeps flowing; every new session
    goes to s2; the open one ends normally and s1's counter returns to 0."""
    path = str(tmp_path / "admin.sock")
    b1, b2 = BackendServer(Echo), BackendServer(Echo)
    async with proxy_with([b1, b2]) as px:
        backend = px.ctx.backend
        prov = Provider([backend], {backend.name: px.ctx})
        async with admin(path, prov):
            held = await connect_client(px.address)
            held.transport.write(b"ping")
            await wait_for(lambda: bytes(held.data) == b"ping", what="echo through s1")
            assert len(b1.conns) == 1 and backend.server("s1").cur_conns == 1

            assert await ask(path, f"set server {backend.name}/s1 state drain\n".encode()) == "\n"
            fresh = []
            for i in range(4):
                c = await connect_client(px.address)
                fresh.append(c)
                c.transport.write(b"n%d" % i)
                await wait_for(lambda c=c, i=i: bytes(c.data) == b"n%d" % i, what="new session")
            assert len(b1.conns) == 1  # no new session reached the drained server
            assert len(b2.conns) == 4

            held.transport.write(b"-still-here")  # the existing session keeps working
            await wait_for(lambda: bytes(held.data) == b"ping-still-here", what="held session")
            out = await ask(path, b"show stat\n")
            s1_row = next(line for line in out.splitlines() if ",s1," in line)
            assert ",DRAIN," in s1_row and s1_row.split(",")[4] == "1"  # scur 1

            held.transport.close()
            for c in fresh:
                c.transport.close()
            await wait_for(lambda: backend.server("s1").cur_conns == 0, what="s1 session ended")
            await wait_for(px.idle, what="all sessions ended")
