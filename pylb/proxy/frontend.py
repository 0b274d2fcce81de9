"""The client side of an HTTP listener: one `HttpFrontend` Protocol per client connection.

Glue only (the rules are in `h1.py` and `exchange.py`): bytes from the client go to the
request parser, events go to the current `Exchange`; one exchange at a time, so pipelined
requests are answered in order. A second request that arrives while one is in progress
waits in `_queue` (its events, at most one read's worth) and reading is paused until the
first is answered (uvicorn's pattern).

Timeouts (one entry per connection in the worker's timer wheel, `pylb.proxy.deadlines`,
moved lazily, aiohttp's pattern; a uvloop handle per connection cost ~590 B): the entry
fires at most every `horizon` seconds (the shortest configured timeout), up to ~10 ms
late and never early, and on each firing computes the current deadline from timestamps
that the data path only *assigns*:

- no request yet / between requests: `http_request` (first) or `http_keep_alive`; the
  connection closes silently;
- a request head begun but incomplete: `http_request`, answered 408 (`cR--`);
- the client idle while we wait for its body, or not reading our response: `client`
  (408 if no response was started, else a cut; `cD--`);
- the server silent while we wait for/stream its response: `server` (504 `sH--` before the
  head, a cut `sD--` after);
- after a 101: `tunnel` on both directions.

Because every deadline is at least `horizon` ahead when it is set, a deadline never needs
an earlier entry than the one already filed: no entry is filed or cancelled per request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from pylb.proxy.errors import ClientProtocolError
from pylb.proxy.exchange import Exchange
from pylb.proxy.flow import FlowControl, set_water_marks
from pylb.proxy.h1 import END, Request, RequestReader, Upgraded
from pylb.proxy.pool import idle_expiry
from pylb.proxy.queue import admit_next, on_accept
from pylb.proxy.responses import canned

if TYPE_CHECKING:
    from pylb.proxy.deadlines import Token
    from pylb.proxy.queue import Ticket
    from pylb.proxy.state import ListenContext

# Reasons to pause reading the client (a bit each; reading resumes when none is left).
_P_UPSTREAM = 1  # the server's socket buffer is full
_P_QUEUED = 2  # a pipelined request waits for the current one
_P_BUFFER = 4  # body bytes wait for the upstream connect

_INF = float("inf")
_NOQ: tuple = ()  # the empty pipelining queue (see HttpFrontend.__init__)
# Request readers of idle connections, reused by the next connection that has bytes to
# parse (module global: one list per worker process; a reader holds no connection state
# between two messages). Bounded: beyond it, readers are left to the garbage collector.
_READERS: list[RequestReader] = []
_READERS_MAX = 1024


class HttpFrontend(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_eof",
        "_head_start",
        "_idle_since",
        "_last_rx",
        "_parked",
        "_pause",
        "_paused_at",
        "_queue",
        "_registered",
        "_requests",
        "_running",
        "_stash",
        "_timer",
        "client_ip",
        "client_ip_b",
        "client_port",
        "closing",
        "conf",
        "ctx",
        "exch",
        "flow",
        "horizon",
        "lb_key",
        "loop",
        "pool_expiry",
        "reader",
        "transport",
        "tunnel",
        "write_paused",
    )

    def __init__(self, ctx: ListenContext) -> None:
        self.ctx = ctx
        self.conf = ctx.conf
        self.loop = ctx.worker.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.reader: RequestReader | None = None  # from _READERS on the first byte
        self.exch: Exchange | None = None
        self.tunnel: Exchange | None = None
        # Pipelined events waiting for the current exchange: almost always none. An empty
        # deque allocates a 64-slot block (~760 B per idle connection), so "empty" is a
        # shared empty tuple and a deque exists only while events wait.
        self._queue: deque | tuple = _NOQ
        self._running = False
        self._pause = 0
        self.flow = FlowControl(None)
        self.write_paused = False
        self._paused_at = 0.0
        self.closing = False  # close after the current response
        self._closed = False
        self._eof = False  # the client shut down its sending side
        self._registered = False
        self._parked: Ticket | None = None  # waiting for room under the listener's maxconn
        self._stash = b""  # what a parked connection sent before its reading paused
        self._requests = 0
        self._timer: Token | None = None  # the entry in ctx.worker.deadlines
        to = self.conf.timeout
        self.horizon = min(to.http_request, to.http_keep_alive, to.client, to.server, to.tunnel)
        self.pool_expiry = idle_expiry(self.conf)
        now = self.loop.time()
        self._idle_since = now
        self._head_start = now
        self._last_rx = now
        self.client_ip = ""
        self.client_ip_b: bytes | None = None
        self.client_port = 0
        self.lb_key: bytes | None = None

    # -- connection lifecycle -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ctx = self.ctx
        verdict = on_accept(ctx, self, self.loop)
        if verdict is True:
            self._admit()
        elif verdict is False:
            ctx.denied_conns += 1
            ctx.backend.denied += 1
            self._closed = True
            transport.abort()  # type: ignore[attr-defined]
        else:  # parked, unread, until one of the listener's connections closes
            self._parked = verdict
            transport.pause_reading()  # type: ignore[attr-defined]
            ctx.worker.connections.add(self)  # shutdown()/abort() reach it

    def _admit(self) -> None:
        """Count and start serving the connection (at accept, or when unparked)."""
        ctx = self.ctx
        worker = ctx.worker
        transport = self.transport
        self._registered = True
        worker.connections.add(self)
        worker.actconn += 1
        ctx.feconn += 1
        ctx.total_conns += 1
        be = ctx.backend
        be.cur_conns += 1
        be.total_conns += 1
        if be.cur_conns > be.max_conns:
            be.max_conns = be.cur_conns
        set_water_marks(self.transport)
        self.flow = FlowControl(self.transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0]
            self.client_port = peer[1]
            self.client_ip_b = self.lb_key = peer[0].encode("ascii")
        now = self.loop.time()
        self._idle_since = self._head_start = self._last_rx = now
        self._timer = worker.deadlines.add(self, now + self.horizon)
        if worker.draining:
            self.closing = True

    # -- parked over the listener's maxconn (pylb.proxy.queue.Waiter) ---------------------------
    def queue_granted(self, _grant: object) -> None:
        """Room under the listener's maxconn: serve this connection now."""
        self._parked = None
        if self._closed or self.transport.is_closing():
            admit_next(self.ctx)  # gone meanwhile: the room goes to the next one
            return
        self.ctx.worker.connections.discard(self)
        self._admit()
        self.transport.resume_reading()
        stash, self._stash = self._stash, b""
        if stash:
            self.data_received(stash)

    def queue_timeout(self) -> None:
        """Parked for `timeout.queue`: answer 503 (the client has likely sent a request)."""
        self._parked = None
        self._refuse_parked()

    def _refuse_parked(self) -> None:
        self.ctx.worker.connections.discard(self)
        self._closed = True
        t = self.transport
        if not t.is_closing():
            t.write(canned(503))
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        t = self._parked
        if t is not None:
            self._parked = None
            if self.ctx.parked is not None:
                self.ctx.parked.cancel(t)
            self.ctx.worker.connections.discard(self)
            return
        ex = self.exch
        if ex is not None:
            self.exch = None
            ex.client_gone()
        elif self.tunnel is not None:
            self.tunnel.client_gone()
        self.tunnel = None
        self._drop_queue()
        if self._timer is not None:
            self.ctx.worker.deadlines.cancel(self, self._timer)
            self._timer = None
        if self._registered:
            self._registered = False
            ctx = self.ctx
            ctx.worker.connections.discard(self)
            ctx.worker.actconn -= 1
            ctx.feconn -= 1
            ctx.backend.cur_conns -= 1
            admit_next(ctx)

    def shutdown(self) -> None:
        """Graceful: finish the current exchange with `Connection: close`; close an idle
        keep-alive connection now. A connection that has not sent its first request yet
        is not idle: its client is about to send it and would get no answer (and no
        client retries a request on a fresh connection), so it is answered, with
        `Connection: close`, or closed by `http_request` like any other."""
        self.closing = True
        if self._parked is not None:
            t, self._parked = self._parked, None
            if self.ctx.parked is not None:
                self.ctx.parked.cancel(t)
            self._refuse_parked()
            return
        if (
            self.exch is None
            and self.tunnel is None
            and (self.reader is None or not self.reader.in_head)
            and not self._queue
            and self._requests > 0
        ):
            self.close_now()

    def abort(self) -> None:
        """Close now, whatever is in flight."""
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def close_now(self) -> None:
        """Close after what was written is flushed."""
        self.closing = True
        self._drop_queue()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def _drop_queue(self) -> None:
        q = self._queue
        if q:
            q.clear()  # type: ignore[union-attr]  # a _run_queue loop holding it stops too
        self._queue = _NOQ

    # -- reading ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._parked is not None:
            # uvloop starts reading after connection_made: hold this read, pause again.
            self._stash += data
            self.transport.pause_reading()
            return
        now = self.loop.time()
        self._last_rx = now
        if self.tunnel is not None:
            self.tunnel.tunnel_from_client(data)
            return
        ex = self.exch
        if ex is not None and ex.holding:
            ex.hold(data)
            return
        reader = self.reader
        if reader is None:
            reader = self.reader = _READERS.pop() if _READERS else RequestReader()
        if not reader.in_head and not self._queue:
            self._head_start = now
        try:
            events = reader.feed(data)
        except ClientProtocolError as e:
            self._bad_request(e)
            return
        if events:
            q = self._queue
            if q:
                q.extend(events)  # type: ignore[union-attr]  # a deque when not empty
            elif (
                len(events) == 2
                and events[1] is END
                and type(events[0]) is Request
                and self.exch is None
                and not self._running
                and not (self.closing and self._requests)
            ):
                # hot path: one whole bodiless request in this read and nothing queued
                # before it: what _run_queue would do, without a deque and its loop.
                self._start(events[0], now)
                ex = self.exch
                if ex is not None:
                    ex.request_end()
                if self._pause & _P_QUEUED:
                    self._set_pause(_P_QUEUED, False)
                return
            else:
                self._queue = deque(events)
            self._run_queue()

    def _run_queue(self) -> None:
        """Dispatch queued events in order, one exchange at a time."""
        if self._running:
            return
        self._running = True
        q = self._queue
        try:
            while q:
                ex = self.exch
                ev = q[0]
                if type(ev) is bytes:
                    q.popleft()
                    if ex is not None:
                        ex.request_body(ev)
                elif ev is END:
                    q.popleft()
                    if ex is not None:
                        ex.request_end()
                elif type(ev) is Request:
                    if ex is not None or (self.closing and self._requests):
                        break  # pipelined: wait for the current exchange to end
                    q.popleft()
                    self._start(ev, self.loop.time())
                elif type(ev) is Upgraded:
                    q.popleft()
                    if ex is not None and not ex.done:
                        ex.holding = True
                        if ev.rest:
                            ex.hold(ev.rest)
                else:  # pragma: no cover - the reader yields nothing else
                    q.popleft()
        finally:
            self._running = False
            if not self._queue:
                self._queue = _NOQ  # drop the emptied deque: an idle connection keeps none
        q = self._queue
        if q and not self.closing:
            self._set_pause(_P_QUEUED, True)
        elif self._pause & _P_QUEUED:
            self._set_pause(_P_QUEUED, False)

    def _start(self, req: Request, now: float) -> None:
        """Start the exchange of `req`, whose head was complete at `now`."""
        self._requests += 1
        ex = Exchange(self, req, self._head_start, now)
        self.exch = ex
        if self.ctx.worker.draining:
            self.closing = True
        ex.start(now)

    def exchange_done(self, ex: Exchange, keep_alive: bool) -> None:
        """Called once by the exchange when its response is complete (or failed)."""
        if self.exch is ex:
            self.exch = None
        if self.tunnel is ex:
            return
        if self._pause & (_P_BUFFER | _P_UPSTREAM):
            self._pause &= ~(_P_BUFFER | _P_UPSTREAM)
            self._set_pause(0, False)
        # Not `worker.draining`: a response whose head already went out keep-alive must
        # leave its connection usable; the next request is answered `Connection: close`
        # (_start) and the drain closes what stays idle.
        if not keep_alive or self.closing:
            self.close_now()
            return
        self._idle_since = self.loop.time()
        if self._queue:
            self._head_start = self._idle_since
            self._run_queue()
        else:
            self._release_reader()
        if self._eof and self.exch is None and not self._queue:
            self.close_now()  # every request the client sent before its EOF is answered

    def _release_reader(self) -> None:
        """Idle between two requests: llhttp is in its start state, so the reader can
        serve any connection; an idle keep-alive connection then holds no parser
        (~1.1 KiB, measured in docs/performance.md)."""
        r = self.reader
        if (
            r is not None
            and self.exch is None
            and not r.in_message
            and not r.stopped
            and len(_READERS) < _READERS_MAX
        ):
            self.reader = None
            _READERS.append(r)

    def eof_received(self) -> bool:
        tun = self.tunnel
        if tun is not None:
            tun.client_eof()
            return not tun.done
        ex = self.exch
        if ex is not None and ex.req_complete and not ex.done:
            # `nc`-style clients send their (possibly pipelined) requests and shut down:
            # answer them all, then close.
            self._eof = True
            return True
        return False  # nothing to answer, or a truncated request: close

    def _bad_request(self, e: ClientProtocolError) -> None:
        self.closing = True
        ex = self.exch
        if ex is not None and not ex.done:
            # A broken body of a request in flight: the response cannot be given any more.
            self.exch = None
            ex.client_gone()
            self.close_now()
            return
        data = canned(e.status_hint)
        self.transport.write(data)
        if self.ctx.worker.access_log.enabled:
            self._log_bad(e.status_hint, "PR--", len(data))
        self.close_now()

    def _log_bad(self, status: int, term: str, nbytes: int) -> None:
        import time

        from pylb.proxy.accesslog import HttpLogRecord

        ctx = self.ctx
        now = self.loop.time()
        rec = HttpLogRecord(
            client_ip=self.client_ip,
            client_port=self.client_port,
            accept_time=time.time() - (now - self._head_start),
            frontend=ctx.conf.name,
            backend=ctx.backend.name,
            server="<NOSRV>",
            t_request=-1,
            t_queue=-1,
            t_connect=-1,
            t_response=-1,
            t_active=int((now - self._head_start) * 1000),
            status=status,
            bytes_read=nbytes,
            term=term,
            actconn=ctx.worker.actconn,
            feconn=ctx.feconn,
            beconn=ctx.backend.cur_conns,
            srv_conn=0,
            retries=0,
            redispatched=False,
            srv_queue=0,
            backend_queue=0,
            request_line="<BADREQ>",
        )
        ctx.worker.access_log.http(rec)

    # -- back-pressure ------------------------------------------------------------------------
    def _set_pause(self, bit: int, on: bool) -> None:
        if on:
            self._pause |= bit
            self.flow.pause_reading()
        else:
            self._pause &= ~bit
            if not self._pause and self.flow.reading_paused:
                self.flow.resume_reading()
                # The client was not idle while we did not read it.
                self._last_rx = self.loop.time()

    def set_upstream_full(self, full: bool) -> None:
        self._set_pause(_P_UPSTREAM, full)

    def set_buffering(self, on: bool) -> None:
        self._set_pause(_P_BUFFER, on)

    def pause_writing(self) -> None:
        """The client reads slower than the server sends: stop reading the server."""
        self.write_paused = True
        self._paused_at = self.loop.time()
        ex = self.exch or self.tunnel
        if ex is not None and ex.up is not None:
            ex.up.flow.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.exch or self.tunnel
        if ex is not None:
            ex.last_srv = self.loop.time()  # the server was not idle while we did not read it
            if ex.up is not None:
                ex.up.flow.resume_reading()

    def start_tunnel(self, ex: Exchange) -> None:
        self.tunnel = ex
        if self.exch is ex:
            self.exch = None

    # -- timeouts -----------------------------------------------------------------------------
    def _on_timer(self) -> None:
        """Called by the worker's `Deadlines` (the entry is gone then: file it again)."""
        self._timer = None
        if self._closed:
            return
        now = self.loop.time()
        deadline, action = self._deadline()
        if now >= deadline:
            action()
            if self._closed or self.transport.is_closing():
                return
            deadline, action = self._deadline()
        self._timer = self.ctx.worker.deadlines.add(self, min(deadline, now + self.horizon))

    def _deadline(self):  # -> tuple[float, Callable[[], None]]
        to = self.conf.timeout
        tun = self.tunnel
        if tun is not None:
            if self.write_paused or self._pause:
                return self.loop.time() + to.tunnel, self._tunnel_timeout
            return max(self._last_rx, tun.last_srv) + to.tunnel, self._tunnel_timeout
        ex = self.exch
        if ex is None:
            if self._queue:
                return _INF, _noop
            if self.reader is not None and self.reader.in_head:
                return self._head_start + to.http_request, self._request_timeout
            wait = to.http_request if self._requests == 0 else to.http_keep_alive
            return self._idle_since + wait, self.close_now
        best, action = _INF, _noop
        # While we do not read one side (back-pressure), its silence is ours, not its own.
        if not ex.req_complete and not ex.holding and not self._pause:
            best, action = self._last_rx + to.client, ex.client_timeout
        if self.write_paused:
            d = self._paused_at + to.client
            if d < best:
                best, action = d, ex.client_timeout
        elif ex.up is not None and not ex.resp_done:
            d = ex.last_srv + to.server
            if d < best:
                best, action = d, ex.server_timeout
        return best, action

    def _request_timeout(self) -> None:
        data = canned(408)
        self.transport.write(data)
        if self.ctx.worker.access_log.enabled:
            self._log_bad(408, "cR--", len(data))
        self.close_now()

    def _tunnel_timeout(self) -> None:
        tun = self.tunnel
        if tun is not None:
            tun.client_timeout()
        self.close_now()

    def __repr__(self) -> str:
        return f"<HttpFrontend {self.client_ip}:{self.client_port} requests={self._requests}>"


def _noop() -> None:
    pass
