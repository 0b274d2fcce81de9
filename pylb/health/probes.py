"""Active check probes: one coroutine per check, connect -> send -> expect -> classify.

Each probe takes (loop, address, timeout) and always returns a `CheckResult`, never raises
(except CancelledError when the checker stops): the scheduler only has to feed results to
the state machine. Every probe has one hard deadline covering connect AND response,
because a frozen server (SIGSTOP) still completes the TCP handshake in the kernel and then
never answers (FACTS.md): a probe without its own read deadline would wait forever and the
server would never be marked down.

Connecting goes through `pylb.proxy.connect.open_connection`, the data plane's own
connect (no task cancellation inside the loop's connect, one deadline): a check therefore
fails in the same way a real request would.

Classification follows HAProxy (`check.c chk_report_conn_err`): a failure before the TCP
connection is established is Layer4 (L4TOUT / L4CON, info = the OS error text); a reset
after it is SOCKERR; no valid answer in time is L7TOUT; an answer that is not HTTP is
L7RSP; a status outside `expect` is L7STS with the reason phrase as info.

Other check types (galera, mysql, amqp) live in their own modules, which register a
factory with `register_probe` and are imported on first use (`PROBE_MODULES`); a type with
no probe falls back to a TCP connect.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import httptools

from pylb.config.model import Address, Health
from pylb.health.types import CheckResult, CheckStatus
from pylb.proxy.connect import ConnectError, open_connection

Probe = Callable[[asyncio.AbstractEventLoop, Address, float], Awaitable[CheckResult]]

log = logging.getLogger("pylb.health")


def _connect_failure(e: ConnectError, duration: float) -> CheckResult:
    status = CheckStatus.L4TOUT if e.kind == "timeout" else CheckStatus.L4CON
    # HAProxy prints no info for a Layer4 timeout (the reason says it all).
    return CheckResult.of(status, info="" if e.kind == "timeout" else e.info, duration=duration)


class _TcpCheckProtocol(asyncio.Protocol):
    """Nothing to read: a TCP check ends as soon as the connection is up."""

    __slots__ = ()


async def tcp_probe(
    loop: asyncio.AbstractEventLoop, address: Address, timeout: float
) -> CheckResult:
    """L4OK when a TCP connection to `address` completes within `timeout`."""
    start = loop.time()
    try:
        transport, _ = await open_connection(loop, address, _TcpCheckProtocol, timeout)
    except ConnectError as e:
        return _connect_failure(e, loop.time() - start)
    transport.close()
    return CheckResult.of(CheckStatus.L4OK, duration=loop.time() - start)


class _HttpCheckProtocol(asyncio.Protocol):
    """Reads a response head with httptools; `done` gets the first outcome:
    ("status", code, reason) | ("invalid", text) | ("closed", exc or None) | ("timeout",)."""

    __slots__ = ("_parser", "_reason", "done")

    def __init__(self, done: asyncio.Future[tuple]) -> None:
        self.done = done
        self._reason = b""
        self._parser = httptools.HttpResponseParser(self)

    def _finish(self, outcome: tuple) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return  # the head was already judged; the rest of the body is not needed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(("status", self._parser.get_status_code(), self._reason))
        except httptools.HttpParserError as e:
            self._finish(("invalid", str(e) or type(e).__name__))

    def eof_received(self) -> bool | None:
        self._finish(("closed", None))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(("closed", exc))

    # httptools callbacks (must not raise: errors would come back as HttpParserCallbackError)
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_headers_complete(self) -> None:
        self._finish(("status", self._parser.get_status_code(), self._reason))


# Printable ASCII stays as written (including existing %XX escapes); spaces, controls and
# non-ASCII are percent-encoded, so no configured path can break the request line.
_PATH_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def build_request(method: str, path: str, host: str) -> bytes:
    """The check request: HTTP/1.0 with `Connection: close`, so any server answers once and
    closes, and nothing is kept open between checks (HAProxy's default httpchk form)."""
    path = quote(path, safe=_PATH_SAFE)
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if not host or not all(0x21 <= ord(c) < 0x7F for c in host):
        raise ValueError(f"bad Host for a health check: {host!r}")
    head = (
        f"{method} {path} HTTP/1.0\r\nHost: {host}\r\n"
        "Connection: close\r\nUser-Agent: pylb-check\r\n\r\n"
    )
    return head.encode("ascii")


def default_host(address: Address) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return host if address.port == 80 else f"{host}:{address.port}"


def status_expected(code: int, expect: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in expect)


async def http_probe(
    loop: asyncio.AbstractEventLoop,
    address: Address,
    timeout: float,
    *,
    method: str = "GET",
    path: str = "/",
    host: str | None = None,
    expect: tuple[tuple[int, int], ...] = ((200, 399),),
) -> CheckResult:
    """L7OK when `address` answers `method path` with a status inside `expect` (inclusive
    ranges) within `timeout`, connect included. Only the status line and headers are read."""
    start = loop.time()
    deadline = start + timeout
    request = build_request(method, path, host or default_host(address))
    done: asyncio.Future[tuple] = loop.create_future()
    try:
        transport, _ = await open_connection(
            loop, address, lambda: _HttpCheckProtocol(done), timeout
        )
    except ConnectError as e:
        return _connect_failure(e, loop.time() - start)
    # One timer for the response; it resolves the future instead of cancelling a task.
    timer = loop.call_at(deadline, lambda: done.done() or done.set_result(("timeout",)))
    try:
        transport.write(request)
        outcome = await done
    finally:
        timer.cancel()
        # Nothing more to read: reset rather than close (HAProxy's checks do the same), so
        # no socket lingers in FIN_WAIT / TIME_WAIT per check, least of all on a frozen peer.
        transport.abort()
    duration = loop.time() - start
    kind = outcome[0]
    if kind == "status":
        code = outcome[1]
        # the reason phrase goes into logs between quotes: printable characters only
        reason = "".join(c if c.isprintable() else "?" for c in outcome[2].decode("latin-1"))
        reason = reason.strip()[:64]
        if status_expected(code, expect):
            return CheckResult.of(CheckStatus.L7OK, code=code, duration=duration)
        return CheckResult.of(CheckStatus.L7STS, code=code, info=reason, duration=duration)
    if kind == "timeout":
        return CheckResult.of(CheckStatus.L7TOUT, duration=duration)
    if kind == "invalid":
        return CheckResult.of(
            CheckStatus.L7RSP, info=f"Invalid HTTP response: {outcome[1]}", duration=duration
        )
    exc = outcome[1]
    if exc is None:
        return CheckResult.of(
            CheckStatus.L7RSP, info="Connection closed before a response", duration=duration
        )
    err = getattr(exc, "errno", None)
    info = os.strerror(err) if isinstance(err, int) else str(exc)
    return CheckResult.of(CheckStatus.SOCKERR, info=info, duration=duration)


def _http_factory(health: Health) -> Probe:
    method, path, host, expect = health.method, health.path, health.host, health.expect
    build_request(method, path, host or "x")  # a bad method/host fails at start, not per check

    async def probe(
        loop: asyncio.AbstractEventLoop, address: Address, timeout: float
    ) -> CheckResult:
        return await http_probe(
            loop, address, timeout, method=method, path=path, host=host, expect=expect
        )

    return probe


def _tcp_factory(health: Health) -> Probe:
    return tcp_probe


# check type -> factory. "clustercheck" is the Percona/Galera HTTP script answering 200/503.
PROBE_FACTORIES: dict[str, Callable[[Health], Probe]] = {
    "tcp": _tcp_factory,
    "http": _http_factory,
    "clustercheck": _http_factory,
}


# Check types implemented in their own module, imported on first use so that processes
# without such checks never import their client libraries (PyMySQL...). The module
# registers its factories with `register_probe` when imported.
PROBE_MODULES: dict[str, str] = {
    "galera": "pylb.health.galera",
    "mysql": "pylb.health.galera",
}


def register_probe(check_type: str, factory: Callable[[Health], Probe]) -> None:
    """Add a check type (galera, mysql, amqp). Call at import time of the module."""
    PROBE_FACTORIES[check_type] = factory


def probe_factory(check_type: str) -> Callable[[Health], Probe] | None:
    """The factory for `check_type`, importing its module if needed; None if there is none
    (or its module cannot be imported: the caller falls back and says so)."""
    factory = PROBE_FACTORIES.get(check_type)
    if factory is None and check_type in PROBE_MODULES:
        try:
            importlib.import_module(PROBE_MODULES[check_type])
        except ImportError as e:
            log.error("health type %s: cannot load its probe (%s)", check_type, e)
            return None
        factory = PROBE_FACTORIES.get(check_type)
    return factory


def make_probe(health: Health) -> Probe:
    """The probe for `health.type`; a plain TCP connect for types with no probe (the
    scheduler logs that once)."""
    return (probe_factory(health.type) or _tcp_factory)(health)
