"""Real HTTP backends and a raw client for the HTTP proxy tests (loopback only).

- `HttpBackend`: a small asyncio HTTP/1.1 server with routes that exercise framing:
  `/echo` (JSON of what arrived), `/bytes/N` (Content-Length), `/chunked/N`, `/eof/N`
  (close-delimited), `/status/N`, `/ws` (WebSocket handshake + echo), `/hang` (never
  answers). It counts connections and requests, and streams bodies (hashes them) so a
  64 MB upload costs no memory here either.
- `RawBackend`: runs a scripted coroutine per connection (garbage, early close ...).
- `Client`: a raw keep-alive client on asyncio streams, parsing responses with httptools
  (independently of the proxy's own h1 module).
- `proxy()`: builds Backend / WorkerState / ListenContext and serves `HttpFrontend`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import httptools
import pytest
import uvloop

from pylb.config.model import Address, Listen, ServerConf, Timeouts
from pylb.proxy.accesslog import AccessLog, HttpLogRecord
from pylb.proxy.backend import Backend
from pylb.proxy.frontend import HttpFrontend
from pylb.proxy.state import ListenContext, WorkerState

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
TEST_DEADLINE = 60.0  # a test taking longer is hung, not slow
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(name="run", params=list(LOOP_FACTORIES))
def run_fixture(request: pytest.FixtureRequest) -> Iterator[Callable[[Coroutine], Any]]:
    """`run(coro)`: run `coro` on a fresh loop of the parametrised kind, bounded in time."""
    factory = LOOP_FACTORIES[request.param]
    with asyncio.Runner(loop_factory=factory) as runner:

        def _run(coro: Coroutine) -> Any:
            async def bounded() -> Any:
                async with asyncio.timeout(TEST_DEADLINE):
                    return await coro

            return runner.run(bounded())

        yield _run


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll a cheap in-process condition until true, or fail after `timeout`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout}s: {what}")
        await asyncio.sleep(0.005)


# -- backends ----------------------------------------------------------------------------------


class Head:
    def __init__(self, method: str, path: str, version: str, headers: list[tuple[str, str]]):
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers

    def get(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    method, path, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        n, _, v = line.partition(":")
        headers.append((n, v.strip()))
    return Head(method, path, version, headers)


async def read_body(reader: asyncio.StreamReader, head: Head, sink: Callable[[bytes], None]):
    """Read a request body by its framing, handing pieces to `sink` (never all at once)."""
    te = head.get("transfer-encoding")
    if te and te.lower() == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            while size:
                piece = await reader.read(min(size, 256 * 1024))
                if not piece:
                    raise ConnectionError("eof in chunk")
                sink(piece)
                size -= len(piece)
            await reader.readexactly(2)
    cl = head.get("content-length")
    if cl:
        left = int(cl)
        while left:
            piece = await reader.read(min(left, 256 * 1024))
            if not piece:
                raise ConnectionError("eof in body")
            sink(piece)
            left -= len(piece)


class HttpBackend:
    """A real asyncio HTTP/1.1 server with framing-exercising routes."""

    def __init__(self, name: str = "s1", *, expect_mode: str = "continue") -> None:
        self.name = name
        self.expect_mode = expect_mode  # "continue": send 100; "reject": 417 at once
        self.connections = 0
        self.requests = 0
        self.heads: list[Head] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> HttpBackend:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(w)
        try:
            while True:
                head = await read_head(r)
                if head is None:
                    return
                self.requests += 1
                self.heads.append(head)
                keep = await self._handle(head, r, w)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.writers.discard(w)
            w.close()

    async def _handle(self, head: Head, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        path = head.path
        if head.get("expect") == "100-continue":
            if self.expect_mode == "reject":
                w.write(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
                await w.drain()
                return False
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        h = hashlib.sha256()
        n = 0

        def sink(piece: bytes) -> None:
            nonlocal n
            h.update(piece)
            n += len(piece)

        await read_body(r, head, sink)
        close = (head.get("connection") or "").lower() == "close" or head.version == "HTTP/1.0"
        if (head.get("connection") or "").lower() == "keep-alive":
            close = False
        conn_hdr = b"Connection: close\r\n" if close else b""
        if head.method == "HEAD":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n" + conn_hdr + b"\r\n")
        elif path.startswith("/ws"):
            return await self._websocket(head, r, w)
        elif path.startswith("/hang"):
            await r.read()  # never answer; wait for the proxy to give up
            return False
        elif path.startswith("/bytes/"):
            size = int(path.split("/")[2])
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % size + conn_hdr + b"\r\n")
            await _stream(w, size, None)
        elif path.startswith("/chunked/"):
            size = int(path.split("/")[2])
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + conn_hdr + b"\r\n")
            await _stream(w, size, "chunked")
            w.write(b"0\r\n\r\n")
        elif path.startswith("/eof/"):
            size = int(path.split("/")[2])
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            await _stream(w, size, None)
            await w.drain()
            return False
        elif path.startswith("/status/"):
            st = int(path.split("/")[2])
            extra = b"Content-Length: 5\r\n" if st == 304 else b""
            w.write(b"HTTP/1.1 %d X\r\n" % st + extra + b'ETag: "x"\r\n' + conn_hdr + b"\r\n")
        elif path.startswith("/hop"):
            body = b"hop"
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: X-Secret, keep-alive\r\n"
                b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nTrailer: T\r\n"
                b"X-Public: p\r\n" + conn_hdr + b"\r\n" + body
            )
        else:  # /echo and everything else
            doc = {
                "server": self.name,
                "method": head.method,
                "path": head.path,
                "version": head.version,
                "headers": head.headers,
                "body_len": n,
                "body_sha": h.hexdigest(),
            }
            body = json.dumps(doc).encode()
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n" % len(body) + conn_hdr + b"\r\n" + body
            )
        await w.drain()
        return not close

    async def _websocket(self, head: Head, r: asyncio.StreamReader, w: asyncio.StreamWriter):
        key = (head.get("sec-websocket-key") or "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await w.drain()
        while True:
            frame = await ws_read(r)
            if frame is None:
                return False
            opcode, payload = frame
            if opcode == 8:  # close
                w.write(ws_frame(payload, opcode=8, mask=False))
                await w.drain()
                return False
            w.write(ws_frame(payload, opcode=opcode, mask=False))
            await w.drain()


async def _stream(w: asyncio.StreamWriter, size: int, framing: str | None) -> None:
    block = os.urandom(64 * 1024)
    left = size
    while left:
        piece = block[: min(left, len(block))]
        if framing == "chunked":
            w.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        else:
            w.write(piece)
        left -= len(piece)
        await w.drain()


class RawBackend:
    """A server running `script(reader, writer)` on every connection."""

    def __init__(self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable]):
        self.script = script
        self.connections = 0
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> RawBackend:
        async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.writers.add(w)
            try:
                await self.script(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.writers.discard(w)
                w.close()

        self.server = await asyncio.start_server(conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)


def free_port() -> int:
    """A loopback port with nothing listening (bound then closed: connects are refused)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- WebSocket frames (RFC 6455, enough for an echo test) ----------------------------------------


def ws_frame(payload: bytes, *, opcode: int = 1, mask: bool = True) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


async def ws_read(r: asyncio.StreamReader) -> tuple[int, bytes] | None:
    try:
        b0, b1 = await r.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await r.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await r.readexactly(8))
        key = await r.readexactly(4) if b1 & 0x80 else None
        payload = await r.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


# -- client ------------------------------------------------------------------------------------


class Resp:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.body_len = 0
        self.complete = False
        self.keep_body = True
        self.sha = hashlib.sha256()
        self.progress: Callable[[], None] | None = None  # called every 16 MB of body
        self._next_progress = 16 * 1024 * 1024

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.decode().lower() == name:
                return v.decode("latin-1")
        return None

    def json(self) -> Any:
        return json.loads(bytes(self.body))


class _RespProto:
    def __init__(self, resp: Resp, parser_box: list) -> None:
        self.resp = resp
        self.box = parser_box

    def on_header(self, name: bytes, value: bytes) -> None:
        self.resp.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.resp.status = self.box[0].get_status_code()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        resp.body_len += len(body)
        if resp.progress is not None and resp.body_len >= resp._next_progress:
            resp._next_progress += 16 * 1024 * 1024
            resp.progress()
        self.resp.sha.update(body)
        if self.resp.keep_body:
            self.resp.body += body

    def on_message_complete(self) -> None:
        self.resp.complete = True


class Client:
    """A raw HTTP/1.1 client over one connection; reads responses in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buf = b""

    @classmethod
    async def connect(cls, port: int) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(r, w)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        version: str = "1.1",
    ) -> Resp:
        hdrs = {"Host": "test"}
        hdrs.update(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Length", str(len(body)))
        head = f"{method} {path} HTTP/{version}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None) + "\r\n"
        self.writer.write(head.encode() + (body or b""))
        return await self.read_response(head_only=method == "HEAD")

    async def read_response(
        self,
        head_only: bool = False,
        keep_body: bool = True,
        progress: Callable[[], None] | None = None,
    ) -> Resp:
        """One final response (interim 1xx skipped). `head_only`: a response to HEAD."""
        while True:
            resp = await self._read_one(head_only, keep_body, progress)
            if not 100 <= resp.status < 200 or resp.status == 101:
                return resp

    async def _read_one(
        self, head_only: bool, keep_body: bool, progress: Callable[[], None] | None = None
    ) -> Resp:
        resp = Resp()
        resp.keep_body = keep_body
        resp.progress = progress
        if head_only:
            while b"\r\n\r\n" not in self._buf:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed before response head")
                self._buf += data
            end = self._buf.index(b"\r\n\r\n") + 4
            raw, self._buf = self._buf[:end], self._buf[end:]
            lines = raw[:-4].split(b"\r\n")
            resp.status = int(lines[0].split(b" ")[1])
            for line in lines[1:]:
                n, _, v = line.partition(b":")
                resp.headers.append((n, v.strip()))
            resp.complete = True
            return resp
        box: list = []
        parser = httptools.HttpResponseParser(_RespProto(resp, box))
        box.append(parser)
        data, self._buf = self._buf, b""
        while True:
            if data:
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade as e:
                    self._buf = data[e.args[0] :]
                    return resp
                if resp.complete:
                    return resp
            data = await self.reader.read(256 * 1024)
            if not data:
                framed = resp.header("content-length") or resp.header("transfer-encoding")
                if resp.status and not resp.complete and framed is None:
                    resp.complete = True  # close-delimited body
                    return resp
                raise ConnectionError("closed before response end")

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the proxy closes the connection (EOF) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


# -- proxy harness -----------------------------------------------------------------------------


class RecordingLog(AccessLog):
    """An access log that keeps the records (and so makes the proxy build them)."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.records: list[HttpLogRecord] = []

    def http(self, rec: HttpLogRecord) -> None:
        self.records.append(rec)


def listen_conf(addresses: list[Address], **kw: Any) -> Listen:
    timeout = kw.pop("timeout", None) or Timeouts()
    weights = kw.pop("weights", None) or [1] * len(addresses)
    servers = tuple(
        ServerConf(name=f"s{i + 1}", address=a, weight=w)
        for i, (a, w) in enumerate(zip(addresses, weights, strict=True))
    )
    return Listen(
        name="web",
        binds=(Address("127.0.0.1", 0),),
        servers=servers,
        mode="http",
        timeout=timeout,
        **kw,
    )


class Proxy:
    def __init__(self, ctx: ListenContext, server: asyncio.base_events.Server, log: RecordingLog):
        self.ctx = ctx
        self.server = server
        self.log = log
        self.port = server.sockets[0].getsockname()[1]

    @property
    def backend(self) -> Backend:
        return self.ctx.backend


@contextlib.asynccontextmanager
async def proxy(conf: Listen) -> AsyncIterator[Proxy]:
    loop = asyncio.get_running_loop()
    log = RecordingLog()
    backend = Backend(conf)
    worker = WorkerState(loop=loop, access_log=log)
    ctx = ListenContext(conf, backend, worker)
    server = await loop.create_server(lambda: HttpFrontend(ctx), "127.0.0.1", 0)
    try:
        yield Proxy(ctx, server, log)
    finally:
        server.close()
        for conn in list(worker.connections):
            conn.abort()
        for srv in backend.servers:
            for up in list(srv.idle):
                up.close()
        await asyncio.sleep(0)


# -- the proxy in its own process (memory tests) --------------------------------------------------


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _serve_main(ports: list[int], loop_kind: str) -> None:
    conf = listen_conf([Address("127.0.0.1", p) for p in ports])
    loop = asyncio.get_running_loop()
    backend = Backend(conf)
    worker = WorkerState(loop=loop, access_log=AccessLog())
    ctx = ListenContext(conf, backend, worker)
    server = await loop.create_server(lambda: HttpFrontend(ctx), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Run until the parent closes our stdin (also when the parent dies).
    done = loop.create_future()

    class _Stdin(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

    import sys

    await loop.connect_read_pipe(_Stdin, sys.stdin)
    await done
    server.close()


if __name__ == "__main__":
    # python -m tests.integration.http_helpers LOOP PORT...: serve an HTTP proxy in front of
    # 127.0.0.1:PORT..., print the listening port, stop when stdin closes.
    import sys

    kind = sys.argv[1]
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[kind]) as runner:
        runner.run(_serve_main([int(p) for p in sys.argv[2:]], kind))
