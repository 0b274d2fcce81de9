"""`pylb demo`: three demo HTTP backends on loopback behind one pylb listener, in one process.

Needs nothing but the package: the backends are tiny asyncio Protocols (httptools parsing,
keep-alive, pipelining) answering `{"server": "demo1", "path": "/..."}`, fast enough to
stand behind load tests too (`start_backends()`). The proxy is the real data plane: a
`pylb.proxy.worker.Worker` on a config built by `config_from_dict`, run in the foreground
in the same event loop, so Ctrl-C (or SIGTERM) drains it and exits 0.

Ports: the proxy listens on 127.0.0.1:8080 and the backends on 8081-8083 when those are
free, otherwise on free ports the kernel picks; `--port 0` puts everything on free ports
(what tests use). The listener is bound without SO_REUSEPORT here, so a busy 8080 is seen
as busy instead of silently shared with whoever holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import httptools

from pylb.config.model import Address, LogConf

log = logging.getLogger("pylb.demo")

DEMO_HOST = "127.0.0.1"
DEMO_PORT = 8080
BACKEND_PORTS = (8081, 8082, 8083)
BACKEND_NAMES = ("demo1", "demo2", "demo3")


BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class DemoBackendProtocol(asyncio.Protocol):
    """One connection to a demo backend: answers every request with its name and path."""

    __slots__ = ("keep_alive", "name", "parser", "transport", "url")

    def __init__(self, name: str) -> None:
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            self._close(BAD_REQUEST)

    def _close(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        keep = self.parser.should_keep_alive()
        path = self.url.decode("latin-1")
        body = json.dumps({"server": self.name, "path": path}).encode() + b"\n"
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"X-Demo-Server: %s\r\n%s\r\n"
            % (len(body), self.name.encode(), b"" if keep else b"Connection: close\r\n")
        )
        if self.parser.get_method() == b"HEAD":
            body = b""
        t.write(head + body)
        if not keep:
            t.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


@dataclass(slots=True)
class DemoBackend:
    name: str
    server: asyncio.base_events.Server
    address: Address

    def close(self) -> None:
        self.server.close()


async def start_backend(name: str, host: str = DEMO_HOST, port: int = 0) -> DemoBackend:
    """A demo backend on `host:port` (0: a free port); OSError if the port is busy."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DemoBackendProtocol(name), host, port)
    sock = server.sockets[0]
    h, p = sock.getsockname()[:2]
    return DemoBackend(name, server, Address(h, p))


async def start_backends(
    names: Sequence[str] = BACKEND_NAMES,
    host: str = DEMO_HOST,
    ports: Sequence[int] | None = None,
) -> list[DemoBackend]:
    """One backend per name, on the preferred `ports` when free, else on free ports."""
    out: list[DemoBackend] = []
    try:
        for i, name in enumerate(names):
            port = ports[i] if ports is not None and i < len(ports) else 0
            try:
                out.append(await start_backend(name, host, port))
            except OSError as e:
                if port == 0 or e.errno != errno.EADDRINUSE:
                    raise
                out.append(await start_backend(name, host, 0))
    except BaseException:
        for b in out:
            b.close()
        raise
    return out


def bind_proxy_socket(host: str, port: int) -> socket.socket:
    """The demo listener: `port`, or a free port when it is busy."""
    from pylb.proxy.listener import bind_socket

    try:
        return bind_socket(Address(host, port), backlog=1024, reuseport=False)
    except OSError as e:
        if port == 0 or e.errno != errno.EADDRINUSE:
            raise
        return bind_socket(Address(host, 0), backlog=1024, reuseport=False)


def demo_config_dict(
    listen: Address, backends: Sequence[DemoBackend], log_target: str = "stdout"
) -> dict:
    """The demo as a pylb config (the same shape a YAML file has)."""
    return {
        "global": {"log": {"target": log_target, "level": "info"}, "hard_stop_after": "3s"},
        "defaults": {
            "mode": "http",
            "balance": "roundrobin",
            "timeout": {"connect": "2s", "client": "30s", "server": "30s"},
        },
        "listen": {
            "demo": {
                "bind": [str(listen)],
                "mode": "http",
                "balance": "roundrobin",
                "forwardfor": True,
                "servers": [{"name": b.name, "address": str(b.address)} for b in backends],
            }
        },
    }


async def run_demo_async(
    port: int = DEMO_PORT,
    host: str = DEMO_HOST,
    *,
    out: TextIO | None = None,
    open_browser: bool = False,
    stop: asyncio.Event | None = None,
) -> int:
    from pylb.config.load import config_from_dict
    from pylb.logsetup import setup_logging
    from pylb.proxy.worker import Worker

    out = out or sys.stdout
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # not the main thread (tests): the `stop` event still works
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    backend_ports = None if port == 0 else BACKEND_PORTS
    backends = await start_backends(BACKEND_NAMES, host, backend_ports)
    sock = None
    worker = None
    try:
        sock = bind_proxy_socket(host, port)
        bound = Address(*sock.getsockname()[:2])
        config = config_from_dict(demo_config_dict(bound, backends), "<demo>")
        setup_logging(LogConf(target="stdout", level="info"), stream=out)
        worker = Worker(config, {"demo": [sock]})
        await worker.start()
        url = f"http://{bound}/"
        listing = ", ".join(f"{b.name} {b.address}" for b in backends)
        print(f"pylb demo: service at {url}  (backends: {listing})", file=out)
        print("Ctrl-C to stop", file=out, flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        await stop.wait()
        print("pylb demo: stopping", file=out, flush=True)
        worker.request_stop()
        await worker.serve()
    finally:
        if worker is None and sock is not None:
            sock.close()
        for b in backends:
            b.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
    print("pylb demo: stopped", file=out, flush=True)
    return 0


def run_demo(port: int = DEMO_PORT, host: str = DEMO_HOST, *, open_browser: bool = False) -> int:
    """`pylb demo`: blocks until Ctrl-C / SIGTERM, returns the exit code."""
    from pylb.proxy.worker import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run_demo_async(port, host, open_browser=open_browser))
