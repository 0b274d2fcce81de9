"""The runtime API socket at `global.admin_socket` (HAProxy's stats socket, level admin).

A unix stream socket, mode 0600: whoever can connect can take servers out of rotation,
so only the service user (and root) may. Non-interactive protocol, as HAProxy's without
`prompt`: the client sends one line (several commands separated by ';'), gets the
answers, and the server closes. That is what `pylb ctl` and
`echo "disable server api/ctl01" | socat stdio /run/pylb/admin.sock` do.

Binding: the parent directory is created (0750) if missing; the socket is bound under a
temporary name, chmod 0600, then renamed over the final path, so a stale socket left by
a killed process is replaced atomically and the path never exists with looser rights.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from pylb.admin.commands import execute_many
from pylb.admin.stats import StatsProvider

log = logging.getLogger("pylb.admin")

MAX_LINE = 64 * 1024  # a command line is tiny; bound what a client can make us buffer
IDLE_TIMEOUT = 10.0  # a client that connects and says nothing is dropped


class AdminProtocol(asyncio.Protocol):
    """One admin connection: read up to the first newline (or EOF), answer, close."""

    __slots__ = ("_buf", "_done", "_task", "_timer", "handler", "provider", "transport")

    def __init__(
        self, provider: StatsProvider, handler: Callable[[str], Awaitable[str]] | None = None
    ) -> None:
        self.provider = provider
        self.handler = handler  # async answer (slot 0's relay to the other workers)
        self._task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._done = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buf += data
        nl = self._buf.find(b"\n")
        if nl >= 0:
            self._answer(bytes(self._buf[:nl]))
        elif len(self._buf) > MAX_LINE:
            self._reply(b"Command line too long.\n\n")

    def eof_received(self) -> bool:
        if not self._done:
            self._answer(bytes(self._buf))
        # An async answer may still be on its way: keep the write side open (_reply closes).
        return self.handler is not None

    def _answer(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self.handler is not None:
            self._done = True
            # kept referenced: the loop holds only a weak reference to a task
            self._task = asyncio.get_running_loop().create_task(self._answer_async(text))
            return
        try:
            out = execute_many(text, self.provider)
        except Exception:  # a command bug must not kill the worker's loop
            log.exception("admin command %r failed", text[:200])
            out = "Internal error.\n\n"
        self._reply(out.encode("utf-8", "replace"))

    async def _answer_async(self, text: str) -> None:
        assert self.handler is not None
        try:
            out = await self.handler(text)
        except Exception:  # a command bug must not kill the worker's loop
            log.exception("admin command %r failed", text[:200])
            out = "Internal error.\n\n"
        self._reply(out.encode("utf-8", "replace"))

    def _reply(self, data: bytes) -> None:
        self._done = True
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)
            t.close()

    def _close(self) -> None:
        self._timer = None
        self._done = True
        if self.transport is not None:
            self.transport.close()


def bind_unix_socket(path: str, mode: int = 0o600) -> socket.socket:
    """A listening unix socket at `path` with `mode`, replacing a stale one. Raises
    FileExistsError when `path` exists and is not a socket (never delete a regular file)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o750, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sock


class AdminServer:
    """The listening admin socket; `close()` removes the path if it is still ours (a
    newer process may have replaced it during a reload: then it is left alone)."""

    def __init__(self, path: str, server: asyncio.Server, ino: int) -> None:
        self.path = path
        self.server = server
        self._ino = ino

    def close(self) -> None:
        self.server.close()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


async def start_admin_socket(
    loop: asyncio.AbstractEventLoop,
    path: str,
    provider: StatsProvider,
    *,
    handler: Callable[[str], Awaitable[str]] | None = None,
    quiet: bool = False,
) -> AdminServer:
    """Serve the runtime API on `path` (mode 0600) until `close()`. `handler`: an async
    answerer used instead of `execute_many` (the multi-worker relay)."""
    sock = bind_unix_socket(path)
    ino = os.lstat(path).st_ino
    server = await loop.create_unix_server(lambda: AdminProtocol(provider, handler), sock=sock)
    if not quiet:
        log.info("Runtime API listening on %s", path)
    return AdminServer(path, server, ino)
