"""The stats HTTP server on `global.stats.bind`: /, /stats.csv, /stats.json, /metrics.

A tiny asyncio Protocol, httptools for parsing (the data plane's parser; no second HTTP
stack). One request per connection, answered with `Connection: close`: the clients are
a browser polling every 2 s and a Prometheus scrape every 15 s, for which keep-alive buys
nothing and costs a state machine. The answer is computed in the loop thread from the
live objects, so it is consistent with what the worker does at that instant.

Optional basic auth (`global.stats.auth`): the password comes from the config or from
`password_file` (read once at start; a missing file fails the start, not every request).
Credentials are compared in constant time (hmac.compare_digest) so response timing does
not reveal how much of a guess was right.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httptools

from pylb.admin.page import render_body, render_page
from pylb.admin.stats import PROMETHEUS_CONTENT_TYPE, StatsProvider, metrics_text, to_csv, to_json
from pylb.config.model import StatsAuth, StatsConf

log = logging.getLogger("pylb.admin")

MAX_HEAD = 16 * 1024  # a stats request is a few hundred bytes; bound what a client can park
REQUEST_TIMEOUT = 10.0  # slowloris bound, as timeout http-request
REALM = "pylb statistics"
CSV_PATHS = (b"/stats.csv", b"/;csv", b"/stats;csv")
CSV_TYPE = "text/csv; charset=utf-8"
# an answer computed asynchronously (content type, producer): with `workers: N`, slot 0
# asks the other workers for their numbers (pylb.admin.relay)
Dynamic = tuple[str, Callable[[], Awaitable[bytes]]]
REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}  # fmt: skip


def load_credentials(auth: StatsAuth | None) -> tuple[bytes, bytes] | None:
    """(user, password) as bytes, or None without auth. Reads password_file now."""
    if auth is None:
        return None
    password = auth.password
    if password is None and auth.password_file is not None:
        with open(auth.password_file, encoding="utf-8") as f:
            password = f.read().rstrip("\r\n")
    if password is None:
        raise ValueError("global.stats.auth needs a password or a password_file")
    return auth.user.encode(), password.encode()


def check_basic(header: bytes | None, creds: tuple[bytes, bytes]) -> bool:
    """Does an Authorization header carry these credentials? Constant-time compare of
    both parts (evaluated both, so a wrong user costs the same as a wrong password)."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    if not sep:
        return False
    ok_user = hmac.compare_digest(user, creds[0])
    ok_pass = hmac.compare_digest(password, creds[1])
    return ok_user and ok_pass


def route(method: bytes, target: bytes, provider: StatsProvider) -> tuple[int, str, bytes]:
    """(status, content type, body) for one authorised request. Pure apart from reading
    the provider's snapshot."""
    if method not in (b"GET", b"HEAD"):
        return 405, "text/plain; charset=utf-8", b"Method Not Allowed\n"
    url = httptools.parse_url(target)
    path = url.path or b"/"
    query = url.query or b""
    params = dict(p.partition(b"=")[::2] for p in query.split(b"&") if p)
    if path in (b"/", b"/stats", b"/index.html"):
        snap = provider.snapshot()
        if params.get(b"part") == b"body":
            return 200, "text/html; charset=utf-8", render_body(snap).encode()
        refresh = params.get(b"refresh", b"")
        ms = int(refresh) if refresh.isdigit() and len(refresh) <= 7 else 2000
        return 200, "text/html; charset=utf-8", render_page(snap, ms).encode()
    if path in CSV_PATHS:
        return 200, "text/csv; charset=utf-8", to_csv(provider.snapshot()).encode()
    if path == b"/stats.json":
        doc = to_json(provider.snapshot())
        return 200, "application/json", (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    if path == b"/metrics":
        return 200, PROMETHEUS_CONTENT_TYPE, metrics_text(provider)
    return 404, "text/plain; charset=utf-8", b"Not Found\n"


def build_response(
    status: int, ctype: str, body: bytes, *, head: bool = False, extra: str = ""
) -> bytes:
    lines = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n"
        f"{extra}\r\n"
    )
    return lines.encode("latin-1") + (b"" if head else body)


class StatsProtocol(asyncio.Protocol):
    """One stats connection: parse one request, answer, close."""

    __slots__ = (
        "_auth",
        "_done",
        "_header",
        "_parser",
        "_received",
        "_task",
        "_timer",
        "_url",
        "creds",
        "dynamic",
        "provider",
        "transport",
    )

    def __init__(
        self,
        provider: StatsProvider,
        creds: tuple[bytes, bytes] | None,
        dynamic: Mapping[bytes, Dynamic] | None = None,
    ) -> None:
        self.provider = provider
        self.creds = creds
        self.dynamic = dynamic  # path -> async answer (slot 0: every worker's numbers)
        self._task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._header = b""
        self._auth: bytes | None = None
        self._received = 0
        self._done = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(REQUEST_TIMEOUT, self._timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timeout(self) -> None:
        self._timer = None
        if not self._done:
            self._send(408, "text/plain; charset=utf-8", b"Request Timeout\n")

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self._auth = value

    def on_message_complete(self) -> None:
        self._respond()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._received += len(data)
        if self._received > MAX_HEAD:
            self._send(431, "text/plain; charset=utf-8", b"Request Too Large\n")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._respond()
        except httptools.HttpParserError:
            self._send(400, "text/plain; charset=utf-8", b"Bad Request\n")

    def _respond(self) -> None:
        if self._done:
            return
        method = self._parser.get_method()
        if self.creds is not None and not check_basic(self._auth, self.creds):
            self._send(
                401,
                "text/plain; charset=utf-8",
                b"401 Unauthorized\n",
                extra=f'WWW-Authenticate: Basic realm="{REALM}", charset="UTF-8"\r\n',
            )
            return
        if self.dynamic and method in (b"GET", b"HEAD"):
            found = self.dynamic.get(httptools.parse_url(self._url).path or b"/")
            if found is not None:
                self._done = True
                # kept referenced: the loop holds only a weak reference to a task
                self._task = asyncio.get_running_loop().create_task(
                    self._respond_async(*found, head=method == b"HEAD")
                )
                return
        try:
            status, ctype, body = route(method, self._url, self.provider)
        except Exception:  # a rendering bug must not kill the worker's loop
            log.exception("stats request %r failed", self._url[:200])
            status, ctype, body = 500, "text/plain; charset=utf-8", b"Internal Server Error\n"
        self._send(status, ctype, body, head=method == b"HEAD")

    async def _respond_async(
        self, ctype: str, produce: Callable[[], Awaitable[bytes]], *, head: bool
    ) -> None:
        try:
            body = await produce()
            status = 200
        except Exception:  # a rendering bug must not kill the worker's loop
            log.exception("stats request %r failed", self._url[:200])
            status, ctype, body = 500, "text/plain; charset=utf-8", b"Internal Server Error\n"
        self._done = False
        self._send(status, ctype, body, head=head)

    def _send(
        self, status: int, ctype: str, body: bytes, *, head: bool = False, extra: str = ""
    ) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(build_response(status, ctype, body, head=head, extra=extra))
        t.close()


async def start_stats_server(
    loop: asyncio.AbstractEventLoop,
    conf: StatsConf,
    provider: StatsProvider,
    *,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    dynamic: Mapping[bytes, Dynamic] | None = None,
) -> asyncio.Server:
    """Serve the stats endpoints on `conf.bind` (or on an already bound `sock`, e.g.
    one the master opened before forking). Raises OSError when the address is taken and
    OSError/ValueError when the password file cannot be read."""
    creds = load_credentials(conf.auth)

    def factory() -> StatsProtocol:
        return StatsProtocol(provider, creds, dynamic)

    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(
        factory,
        host=conf.bind.host,
        port=conf.bind.port,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
