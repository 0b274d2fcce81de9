"""One request/response through the HTTP proxy: chosen server, queue, retries, timings, log.

The frontend (`HttpFrontend`, one per client connection) creates one `Exchange` per
request and feeds it the request events; the upstream connection (`UpstreamConn`) calls it
back with the server's bytes. An exchange never blocks the loop and, when the pool has an
idle connection, never creates a task: the request head is written from the client's
`data_received` callback and the response from the server's (uvicorn's
connection/cycle split; a connect attempt alone is a task).

Resilience (issue 3; docs/health.md "Resilience"):

- a server at its `maxconn` makes the request wait in the backend's queue
  (`pylb.proxy.queue`); the slot is granted by whichever server frees one first, or the
  request is answered 503 after `timeout.queue` (`sQ--`);
- every connect failure, and a reset before the first response byte, is reported to the
  server's health check at once (passive observation), so traffic leaves a dead server
  before its next active check;
- a failed connect is retried up to `retries` times (after HAProxy's 1 s turn-around when
  it was refused), the last time on another server with `redispatch`, and at once on
  another server when observation has just taken the failed one out;
- a connect that takes far longer than the server's usual connect time
  (`slow_connect_after`) starts a second connect to another server, and the first one to
  complete wins (happy-eyeballs style: no connect is ever cancelled, a loser is closed when
  it completes), so a crashed server that drops SYNs costs a few hundred ms, not
  `timeout.connect`;
- an idempotent request whose server connection dies before the first response byte is
  replayed on another server, if its whole body (if any) is still kept (`REPLAY_MAX`).
  POST and PATCH are never replayed once anything was sent.

Errors are answered as HAProxy answers them: no usable server or connect failure after
the retries -> 503; the server closes, resets or sends garbage before its response head
-> 502; no response head within `timeout.server` -> 504. After the head was relayed an
error can only cut the client connection. Termination states are HAProxy's 4 characters.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pylb.balance.base import Balancer
from pylb.health.passive import observation_for, observe
from pylb.health.types import Observation
from pylb.proxy import pool
from pylb.proxy.accesslog import HttpLogRecord
from pylb.proxy.connect import ConnectError, open_connection
from pylb.proxy.errors import UpstreamProtocolError
from pylb.proxy.flow import HIGH_WATER
from pylb.proxy.h1 import (
    END,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    Request,
    Response,
    ResponseFraming,
    Upgraded,
    chunk_header,
    response_framing,
    serialize_request_head,
    serialize_response_head,
)
from pylb.proxy.responses import canned, canned_head_only
from pylb.proxy.upstream import ACTIVE, UpstreamConn

if TYPE_CHECKING:
    from pylb.proxy.backend import Backend, Server
    from pylb.proxy.frontend import HttpFrontend
    from pylb.proxy.queue import Ticket

_CRLF = b"\r\n"
RETRY_TURNAROUND = 1.0  # HAProxy: min(timeout connect, 1 s) before retrying the same server
_NO_FRAMING = ResponseFraming(False, True)


# Below this many bytes, what one server read produced is joined into one bytes object
# and written with write(): one send(2) of one buffer instead of a writev(2) of several.
# Above it the pieces go out with writelines(), so a body is never copied.
JOIN_MAX = 4096


def _flush(t: asyncio.Transport, out: list[bytes], size: int) -> None:
    """Write what `Exchange._on_events` gathered in one call (one syscall on uvloop).
    `size`: the bytes in `out`."""
    if out:
        if len(out) == 1:
            t.write(out[0])
        elif size <= JOIN_MAX:
            t.write(b"".join(out))
        else:
            t.writelines(out)
        out.clear()


# A request body is kept for a replay only up to this size (HAProxy replays only what it
# still holds in its buffer, `retry-on`; its default buffer is 16 KiB). 64 KiB is the
# flow-control high-water mark: what one socket write buffer holds anyway, so keeping it
# costs at most one more buffer per in-flight idempotent request with a body.
REPLAY_MAX = HIGH_WATER

# Slow connect as a crash signal (ARCHITECTURE.md "A backend node that crashes"): a connect
# still pending after SLOW_CONNECT_FACTOR x the server's usual connect time (EWMA), but at
# least SLOW_CONNECT_MIN and at most SLOW_CONNECT_MAX, races a connect to another server.
SLOW_CONNECT_FACTOR = 10.0
SLOW_CONNECT_MIN = 0.2  # s: far above a LAN connect (~0.1-1 ms), below any client's patience
SLOW_CONNECT_MAX = 2.0  # s: a server with a slow history is still raced well before 5-10 s
SLOW_CONNECT_UNKNOWN = 1.0  # s: no connect to any server of the backend measured yet
EWMA_ALPHA = 0.2  # weight of the newest sample: about the last 5-10 connects count


def slow_connect_after(usual: float | None, connect_timeout: float) -> float | None:
    """Seconds after which a pending connect counts as slow, or None when racing cannot
    help (the threshold would not come before `timeout.connect`). Pure.

    `usual`: the server's EWMA connect time (s), or the backend's when the server has no
    sample yet, or None when nothing was measured (then SLOW_CONNECT_UNKNOWN)."""
    if usual is None:
        after = SLOW_CONNECT_UNKNOWN
    else:
        after = min(max(SLOW_CONNECT_FACTOR * usual, SLOW_CONNECT_MIN), SLOW_CONNECT_MAX)
    return after if after < connect_timeout else None


def usual_connect_time(server: Server) -> float | None:
    """The server's EWMA connect time, else the slowest EWMA of its backend's servers (a
    server that never connected is compared with its peers), else None."""
    e = server.connect_ewma
    if e is not None:
        return e
    samples = [s.connect_ewma for s in server.backend.servers if s.connect_ewma is not None]
    return max(samples) if samples else None


def record_connect_time(server: Server, seconds: float) -> None:
    e = server.connect_ewma
    server.connect_ewma = seconds if e is None else e + EWMA_ALPHA * (seconds - e)


def observe_server_failure(server: Server, kind: str, info: str = "") -> None:
    """Passive health observation (HAProxy `observe layer4`): a connect failure (`kind` =
    ConnectError.kind) or a reset before the first response byte ('reset') counts as a
    failed check of `server` at once. An invalid response or a server timeout is not a
    layer-4 event: active checks judge those. No-op for a server without active checks."""
    if kind == "reset":
        observe(server, Observation.RESET, info or "Connection reset before the response")
    elif kind not in ("invalid", "timeout-response"):
        observe(server, observation_for(kind), info)


def can_take(server: Server) -> bool:
    """The balancer may use `server` and it is under its maxconn."""
    return Balancer.eligible(server) and server.has_slot()


class _Attempt:
    """One connect to one server (a task), owning one `take()` of that server while `live`.

    Several attempts of one exchange may run at once (a slow connect raced by another);
    the first to connect wins, the others are released and their connection, if it ever
    completes, is closed. No attempt is ever cancelled (uvloop #738: see connect.py)."""

    __slots__ = ("live", "server", "t0", "task", "timer")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.live = True
        self.t0 = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # kept referenced while it runs

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def release(self) -> None:
        """Give the server slot back (idempotent)."""
        self.stop_timer()
        if self.live:
            self.live = False
            self.server.drop()


class Exchange:
    __slots__ = (
        "_attempts",
        "_slot",
        "body_sent",
        "bytes_out",
        "done",
        "eof_c",
        "eof_s",
        "fe",
        "framing",
        "head",
        "held",
        "holding",
        "last_srv",
        "pending",
        "pending_bytes",
        "q_ahead",
        "redispatched",
        "replay",
        "replay_bytes",
        "req",
        "req_complete",
        "resp_done",
        "resp_head_sent",
        "resp_seen",
        "retries",
        "server",
        "stale_retried",
        "status",
        "t_conn0",
        "t_connect",
        "t_head",
        "t_queue",
        "t_response",
        "t_sent",
        "t_start",
        "ticket",
        "tunnel",
        "up",
        "upgrading",
    )

    def __init__(self, fe: HttpFrontend, req: Request, t_start: float, t_head: float) -> None:
        self.fe = fe
        self.req = req
        self.server: Server | None = None  # the server of this request (logs, counters)
        self._slot: Server | None = None  # the server whose take() this exchange owns
        self._attempts: list[_Attempt] | None = None  # connects in flight
        self.ticket: Ticket | None = None  # place in the backend queue
        self.up: UpstreamConn | None = None
        self.head = b""
        self.pending: list = []  # body pieces / END received before the upstream is ready
        self.pending_bytes = 0
        # Body bytes sent so far, kept for a replay (idempotent methods, <= REPLAY_MAX).
        self.replay: list[bytes] | None = None
        if (req.chunked or req.content_length) and req.method in IDEMPOTENT_METHODS:
            cl = req.content_length
            if cl is None or cl <= REPLAY_MAX:
                self.replay = []
        self.replay_bytes = 0
        self.held: list[bytes] = []  # client bytes after an Upgrade request head
        self.holding = False
        self.req_complete = False
        self.body_sent = False
        self.resp_seen = False  # any byte from the server for this exchange
        self.resp_head_sent = False
        self.resp_done = False
        self.done = False
        self.tunnel = False
        self.eof_c = False  # tunnel: the client shut down its sending side
        self.eof_s = False  # tunnel: the server did
        self.upgrading = False
        self.framing = _NO_FRAMING
        self.status = -1
        self.bytes_out = 0
        self.retries = 0
        self.redispatched = False
        self.stale_retried = False
        self.t_start = t_start
        self.t_head = t_head
        self.t_queue = 0.0
        self.q_ahead = 0
        self.t_conn0 = -1.0
        self.t_connect = -1.0
        self.t_sent = -1.0
        self.t_response = -1.0
        self.last_srv = t_head

    # -- start: pick, queue, pool, connect ---------------------------------------------------
    def start(self, now: float) -> None:
        """Pick a server and send, from the client's read at `now` (the loop's time)."""
        fe = self.fe
        backend = fe.ctx.backend
        srv = backend.pick(fe.lb_key)
        if srv is None:
            self._fail(503, "SC")
            return
        self.server = srv
        self.head = serialize_request_head(self.req, fe.client_ip_b, fe.conf.forwardfor)
        if not srv.has_slot():
            # Every server is at its maxconn (the balancer prefers one with a slot).
            self._enqueue(backend)
            return
        srv.take()
        self._slot = srv
        self._go(srv, now=now)

    def _go(self, srv: Server, fresh: bool = False, now: float | None = None) -> None:
        """Send on `srv`, whose slot this exchange holds: a pooled connection, else a
        connect attempt (which takes the slot over). `now`: the loop's time if the
        caller has it (one clock read per callback on the hot path)."""
        if now is None:
            now = self.fe.loop.time()
        conn = None if fresh else pool.acquire(srv, now)
        if conn is not None:
            self.t_connect = 0.0
            self._attach(conn, now)
            return
        self._slot = None
        self._launch(_Attempt(srv), 0.0)

    # -- queue (pylb.proxy.queue.Waiter) -----------------------------------------------------
    def _enqueue(self, backend: Backend) -> None:
        fe = self.fe
        t = backend.queue.wait(self, fe.loop, fe.lb_key)
        if t is None:  # the queue is full too
            self._fail(503, "SQ")
            return
        self.ticket = t
        self.q_ahead = t.ahead

    def queue_granted(self, server: Server) -> None:
        """A slot of `server` was taken for us (pylb.proxy.queue.BackendQueue.dispatch)."""
        t, self.ticket = self.ticket, None
        if self.done:
            server.drop()  # hand it on to the next waiter
            return
        if t is not None:
            self.t_queue = self.fe.loop.time() - t.since
        self.server = server
        self._slot = server
        self._go(server)

    def queue_timeout(self) -> None:
        t, self.ticket = self.ticket, None
        if self.done:
            return
        if t is not None:
            self.t_queue = self.fe.loop.time() - t.since
        self._fail(503, "sQ")

    # -- connect attempts --------------------------------------------------------------------
    def _launch(self, att: _Attempt, delay: float) -> None:
        atts = self._attempts
        if atts is None:
            self._attempts = [att]
        elif att not in atts:
            atts.append(att)
        att.task = self.fe.loop.create_task(self._run_attempt(att, delay))

    async def _run_attempt(self, att: _Attempt, delay: float) -> None:
        loop = self.fe.loop
        if delay > 0:
            await asyncio.sleep(delay)
        if not att.live or self.done:
            att.release()
            return
        srv = att.server
        timeout = self.fe.conf.timeout.connect
        att.t0 = now = loop.time()
        if self.t_conn0 < 0:
            self.t_conn0 = now
        after = slow_connect_after(usual_connect_time(srv), timeout)
        if after is not None and self.retries < self.fe.conf.retries:
            att.timer = loop.call_at(now + after, self._attempt_slow, att)
        try:
            _, conn = await open_connection(
                loop, srv.address, lambda: UpstreamConn(srv, loop), timeout
            )
        except ConnectError as e:
            self._attempt_failed(att, e)
            return
        except Exception:  # an unexpected local error: answer rather than hang
            att.release()
            if not self.done and not self._others_live(att):
                self._fail(503, "SC")
            raise
        self._attempt_ok(att, conn)

    def _others_live(self, att: _Attempt) -> bool:
        atts = self._attempts
        return atts is not None and any(a is not att and a.live for a in atts)

    def _live_servers(self) -> tuple[Server, ...]:
        atts = self._attempts or ()
        return tuple(a.server for a in atts if a.live)

    def _alternative(self, avoid: tuple[Server, ...]) -> Server | None:
        """Another server able to take this request now (a slot free), or None."""
        fe = self.fe
        alt = fe.ctx.backend.pick(fe.lb_key, avoid=avoid)
        if alt is None or alt in avoid or not can_take(alt):
            return None
        return alt

    def _attempt_ok(self, att: _Attempt, conn: UpstreamConn) -> None:
        att.stop_timer()
        if not att.live or self.done:
            conn.close()  # abandoned (the race was won elsewhere, or the exchange is over)
            att.release()
            return
        srv = att.server
        now = self.fe.loop.time()
        record_connect_time(srv, now - att.t0)
        if srv.check is not None:
            observe(srv, Observation.CONNECT_OK)  # ends a run of observed errors
        for other in self._attempts or ():
            if other is not att:
                other.release()
        self._attempts = None
        att.live = False  # its take() now belongs to the exchange
        self._slot = self.server = srv
        self.t_connect = now - self.t_conn0
        self._attach(conn)

    def _attempt_slow(self, att: _Attempt) -> None:
        """`att` is still connecting long after its server's usual connect time: race a
        connect to another server, and count the slow one as a failed observation."""
        att.timer = None
        if not att.live or self.done or self.up is not None:
            return
        conf = self.fe.conf
        if self.retries >= conf.retries or not conf.redispatch:
            return
        alt = self._alternative(self._live_servers())
        if alt is None:
            return
        srv = att.server
        waited = self.fe.loop.time() - att.t0
        observe(srv, Observation.CONNECT_TIMEOUT, f"connect pending for {int(waited * 1000)}ms")
        self.retries += 1
        srv.redispatches += 1
        self.redispatched = True
        self.server = alt
        alt.take()
        self._launch(_Attempt(alt), 0.0)

    def _attempt_failed(self, att: _Attempt, e: ConnectError) -> None:
        att.stop_timer()
        srv = att.server
        if not att.live:
            att.release()
            return  # abandoned earlier (and observed as slow then)
        srv.failed_conns += 1
        observe_server_failure(srv, e.kind, e.info)
        if self.done or self._others_live(att):
            att.release()  # the race goes on with the other attempt(s)
            if self._attempts is not None:
                self._attempts.remove(att)
            return
        conf = self.fe.conf
        if self.retries >= conf.retries:
            att.release()
            self._attempts = None
            self._fail(503, "sC" if e.kind == "timeout" else "SC")
            return
        self.retries += 1
        srv.retries += 1
        # HAProxy's `option redispatch`: the last retry goes to another server; so does any
        # retry once observation has taken the failed server out (it would fail again).
        if conf.redispatch and (self.retries == conf.retries or not srv.usable):
            alt = self._alternative((srv,))
            if alt is not None:
                att.release()
                self._attempts = None
                self.redispatched = True
                srv.redispatches += 1
                self.server = alt
                alt.take()
                self._launch(_Attempt(alt), 0.0)
                return
        # The same server again, `att` keeps its slot. HAProxy's turn-around: a server that
        # refused us is likely restarting; retrying it at once would only fail again.
        delay = 0.0 if e.kind == "timeout" else min(conf.timeout.connect, RETRY_TURNAROUND)
        self.server = srv
        self._launch(att, delay)

    def _attach(self, conn: UpstreamConn, now: float | None = None) -> None:
        """Send the head (and what body arrived meanwhile) on a connected upstream."""
        self.up = conn
        conn.activate(self)
        conn.reader.expect(self.req.method == b"HEAD")  # (the only place that sets it)
        if conn.transport is None or conn.transport.is_closing():
            # The server closed (or spoke first) before we could send anything.
            self._server_failed("reset")
            return
        fe = self.fe
        if now is None:
            now = fe.loop.time()
        self.t_sent = self.last_srv = now
        t = conn.transport
        assert t is not None
        head = self.head
        t.write(head)
        n = len(head)
        self.server.bytes_in += n  # type: ignore[union-attr]  # (_count_in, inlined)
        fe.ctx.backend.bytes_in += n
        if fe.write_paused:
            conn.flow.pause_reading()
        pending = self.pending
        if pending:
            self.pending = []
            self.pending_bytes = 0
            for item in pending:
                if item is END:
                    self._send_end()
                else:
                    self._send_body(item)
            fe.set_buffering(False)

    def _count_in(self, n: int) -> None:
        self.server.bytes_in += n  # type: ignore[union-attr]
        self.fe.ctx.backend.bytes_in += n

    # -- request side (called by the frontend) ------------------------------------------------
    def request_body(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.state is ACTIVE:
            self._send_body(data)
        elif not self.done:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > HIGH_WATER:
                self.fe.set_buffering(True)

    def _send_body(self, data: bytes) -> None:
        t = self.up.transport  # type: ignore[union-attr]
        n = len(data)
        if self.req.chunked:
            # hot path: writelines is one writev on uvloop; the body bytes are not copied.
            t.writelines((chunk_header(n), data, _CRLF))  # type: ignore[union-attr]
        else:
            t.write(data)  # type: ignore[union-attr]
        self.body_sent = True
        self._count_in(n)
        kept = self.replay
        if kept is not None:
            if self.replay_bytes + n <= REPLAY_MAX:
                kept.append(data)
                self.replay_bytes += n
            else:
                self.replay = None  # too big to replay: this request is not replayable now

    def request_end(self) -> None:
        self.req_complete = True
        if self.done:
            return
        up = self.up
        if up is not None and up.state is ACTIVE:
            if self.req.chunked:
                self._send_end()
        else:
            self.pending.append(END)
        if self.resp_done:
            self._finish("----")

    def _send_end(self) -> None:
        if self.req.chunked:
            self.up.transport.write(LAST_CHUNK)  # type: ignore[union-attr]
            self._count_in(len(LAST_CHUNK))

    def hold(self, data: bytes) -> None:
        """Client bytes after an Upgrade request: kept until the server answers 101."""
        self.held.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > HIGH_WATER:
            self.fe.set_buffering(True)

    def tunnel_from_client(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.write(data)
            self._count_in(len(data))

    def client_eof(self) -> None:
        """The client shut down its sending side during a tunnel: propagate it."""
        self.eof_c = True
        if self.eof_s:
            self._tunnel_end()
            return
        up = self.up
        if up is not None and up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()

    def _tunnel_end(self) -> None:
        """Both directions of a tunnel are shut: close both connections."""
        self._close_upstream()
        self._finish("----")
        self.fe.close_now()

    def client_gone(self) -> None:
        """The client connection closed (or was aborted) before the exchange ended."""
        if self.done:
            return
        if self.tunnel:
            term = "----"
        elif self.resp_head_sent:
            term = "CD--"
        elif self.req_complete:
            term = "CH--"
        else:
            term = "CR--"
        self._close_upstream()
        self._finish(term)

    # -- response side (called by UpstreamConn) ----------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        fe = self.fe
        self.last_srv = fe.loop.time()
        if not self.resp_seen:
            self.resp_seen = True
            self.replay = None  # the server answers: no replay any more, free the copy
        if self.tunnel:
            fe.transport.write(data)
            self._count_out(len(data))
            return
        up = self.up
        try:
            events = up.reader.feed(data)  # type: ignore[union-attr]
        except UpstreamProtocolError:
            self._server_failed("invalid")
            return
        self._on_events(events)

    def _on_events(self, events: list) -> None:
        # hot path: what one server read produced (typically the response head, the
        # body and its end) goes to the client in one write: uvloop sends each write() at
        # once when its buffer is empty, so the head and the body written apart cost two
        # syscalls and two TCP segments per response (measured: 3 writes per request
        # against HAProxy's 2). `out` (and its byte count) is flushed before anything that
        # may write, finish or close.
        t = self.fe.transport
        out: list[bytes] = []
        size = 0
        last = len(events) - 1
        try:
            for i, ev in enumerate(events):
                if type(ev) is bytes:
                    n = len(ev)
                    if self.framing.chunk:
                        out += (chunk_header(n), ev, _CRLF)
                    else:
                        out.append(ev)
                    size += n
                elif ev is END:
                    if self.upgrading:
                        continue
                    if self.status >= 200:
                        self._count_out(size)
                        _flush(t, out, size)
                        size = 0
                        self._response_done(trailing=i < last)
                        return
                elif type(ev) is Response:
                    n = self._on_response(ev, out)
                    if n < 0:
                        return
                    size += n
                elif type(ev) is Upgraded:
                    self._count_out(size)
                    _flush(t, out, size)
                    size = 0
                    self._start_tunnel(ev.rest)
                    return
        finally:
            if out:
                self._count_out(size)
                _flush(t, out, size)

    def _count_out(self, n: int) -> None:
        self.bytes_out += n
        self.server.bytes_out += n  # type: ignore[union-attr]
        self.fe.ctx.backend.bytes_out += n

    def _on_response(self, resp: Response, out: list[bytes]) -> int:
        """Relay a response head: appended to `out` (see _on_events). Returns its size,
        or -1 when the exchange failed (and `out` was flushed)."""
        fe = self.fe
        req = self.req
        if self.t_response < 0:
            self.t_response = self.last_srv  # read by upstream_data for this read
        st = resp.status
        if st < 200:
            if st == 101:
                if req.upgrade is None:
                    n = sum(map(len, out))  # interim heads already relayed
                    self._count_out(n)
                    _flush(fe.transport, out, n)
                    self._server_failed("invalid")
                    return -1
                self.upgrading = True
                self.status = 101
                head = serialize_response_head(req, resp, _NO_FRAMING)
                out.append(head)
                self.resp_head_sent = True
                return len(head)
            if req.version == b"1.1":  # interim responses are relayed to HTTP/1.1 clients
                head = serialize_response_head(req, resp, _NO_FRAMING)
                out.append(head)
                return len(head)
            return 0
        self.status = st
        # Close the client connection after this response when we cannot tell where the
        # client's next request starts: its body is not fully read yet (an early answer,
        # or a 100-continue the server never sent), or the server declined an Upgrade.
        closing = (
            fe.closing or fe.ctx.worker.draining or not self.req_complete or req.upgrade is not None
        )
        up = self.up
        self.framing = framing = response_framing(req, resp, up.reader.eof_body, closing)  # type: ignore[union-attr]
        head = serialize_response_head(req, resp, framing)
        out.append(head)
        self.resp_head_sent = True
        return len(head)

    def _response_done(self, trailing: bool = False) -> None:
        """The response is complete. `trailing`: the server sent more after it (never
        valid with one request in flight), so its connection is not reused."""
        fe = self.fe
        if self.framing.chunk:
            fe.transport.write(LAST_CHUNK)
            self._count_out(len(LAST_CHUNK))
        self.resp_done = True
        up = self.up
        self.up = None
        if up is not None:
            r = up.reader
            if (
                r.keep_alive
                and not trailing
                and not r.stopped
                and not r.in_message
                and self.req_complete
                and not fe.ctx.worker.draining
            ):
                pool.release(self.server, up, self.last_srv, fe.pool_expiry)  # type: ignore[arg-type]
            else:
                up.close()
        # If the request body has not ended, the head said `Connection: close` (framing)
        # and the frontend closes after this response.
        self._finish("----")

    def _start_tunnel(self, rest: bytes) -> None:
        """101 relayed: from now on both connections are a byte pipe (timeout.tunnel)."""
        self.upgrading = False
        self.tunnel = True
        self.holding = False
        fe = self.fe
        if rest:
            fe.transport.write(rest)
            self._count_out(len(rest))
        fe.start_tunnel(self)
        held = self.held
        self.held = []
        self.pending_bytes = 0
        for data in held:
            self.tunnel_from_client(data)
        fe.set_buffering(False)

    def upstream_eof(self) -> bool:
        if self.tunnel:
            self.eof_s = True
            if self.eof_c:
                self._tunnel_end()
                return False
            fe = self.fe
            if fe.transport.can_write_eof():
                fe.transport.write_eof()
            return True  # keep the other direction open (half-close, as the TCP relay)
        up = self.up
        try:
            events = up.reader.feed_eof()  # type: ignore[union-attr]
        except UpstreamProtocolError:
            self._server_failed("reset")
            return False
        if events:
            self._on_events(events)
        if not self.resp_done and not self.done:
            self._server_failed("reset")
        return False

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.done:
            return
        if self.tunnel:
            self.up = None
            self._finish("----")
            self.fe.close_now()
            return
        if not self.resp_done:
            self._server_failed("reset")

    def upstream_pause_writing(self) -> None:
        self.fe.set_upstream_full(True)

    def upstream_resume_writing(self) -> None:
        self.fe.set_upstream_full(False)

    # -- failures ---------------------------------------------------------------------------
    def _server_failed(self, kind: str) -> None:
        """The server closed, reset or broke framing before the response ended."""
        if self.done or self.resp_done:
            return
        up = self.up
        stale = up is not None and up.uses > 1 and not self.resp_seen
        self._close_upstream()
        srv = self.server
        assert srv is not None
        if self.resp_head_sent:
            srv.resp_errors += 1
            self._cut("SD--")
            return
        if not self.resp_seen:
            if stale and not self.stale_retried and self._can_replay():
                # A pooled connection the server closed just as we reused it: the request
                # never reached the application. Send it again on a fresh connection (the
                # server is fine: this is the keep-alive race, not a failure).
                self.stale_retried = True
                self._prepare_resend()
                self._go(srv, fresh=True)
                return
            if not stale:
                observe_server_failure(srv, kind)
            if self._replay_elsewhere():
                return
        srv.resp_errors += 1
        self._fail(502, "SH")

    def _can_replay(self) -> bool:
        """May this request be sent again from the start? Idempotent (RFC 9110 §9.2.2), not
        an upgrade, and its body (if any) entirely kept so far (`REPLAY_MAX`)."""
        req = self.req
        if req.method not in IDEMPOTENT_METHODS or req.upgrade is not None:
            return False
        return not req.has_body or self.replay is not None

    def _replay_elsewhere(self) -> bool:
        """Replay a request whose connection died before the first response byte on
        another server, as one retry + redispatch (HAProxy `retry-on empty-response`
        with `option redispatch`). Returns True when it took over the exchange."""
        conf = self.fe.conf
        if not self._can_replay() or not conf.redispatch or self.retries >= conf.retries:
            return False
        srv = self.server
        assert srv is not None
        alt = self._alternative((srv,))
        if alt is None:
            return False
        self.retries += 1
        srv.retries += 1
        srv.redispatches += 1
        self.redispatched = True
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.drop()
        alt.take()
        self._slot = self.server = alt
        self._prepare_resend()
        self._go(alt)
        return True

    def _prepare_resend(self) -> None:
        """Queue the kept body (and its end, if it was sent) to go out again after the
        head on the next connection; pieces still to come are streamed as usual."""
        kept = self.replay
        resend: list = list(kept) if kept else []
        if kept is not None:
            self.replay = []
            self.replay_bytes = 0
        pending = self.pending
        if self.req_complete and not any(x is END for x in pending):
            resend.append(END)
        self.pending = resend + pending
        self.pending_bytes = sum(len(x) for x in self.pending if x is not END)
        self.t_sent = -1.0

    def server_timeout(self) -> None:
        # Not observed and not replayed: a server that is slow to answer is not a dead one
        # (active checks judge it), and replaying slow requests only multiplies the load.
        if self.done:
            return
        srv = self.server
        self._close_upstream()
        if not self.resp_head_sent:
            srv.resp_errors += 1  # type: ignore[union-attr]
            self._fail(504, "sH")
        else:
            self._cut("sD--")

    def client_timeout(self) -> None:
        if self.done:
            return
        self._close_upstream()
        if not self.resp_head_sent and not self.tunnel:
            self._fail(408, "cD")
        else:
            self._cut("cD--")

    def _cut(self, term: str) -> None:
        """End the exchange and close the client connection without a (full) response."""
        self.framing = ResponseFraming(False, False)
        self._finish(term)
        self.fe.close_now()

    def _close_upstream(self) -> None:
        up = self.up
        self.up = None
        if up is not None:
            up.close()

    def _fail(self, status: int, term2: str) -> None:
        """Answer with a canned error and close the client connection after it."""
        fe = self.fe
        self.status = status
        data = canned_head_only(status) if self.req.method == b"HEAD" else canned(status)
        if not fe.transport.is_closing():
            fe.transport.write(data)
        self.bytes_out += len(data)
        self.framing = ResponseFraming(False, False)
        self.resp_head_sent = True
        self._close_upstream()
        self._finish(term2 + "--")

    # -- end ---------------------------------------------------------------------------------
    def _finish(self, term: str) -> None:
        if self.done:
            return
        self.done = True
        fe = self.fe
        t = self.ticket
        if t is not None:
            self.ticket = None
            fe.ctx.backend.queue.cancel(t)
        atts = self._attempts
        if atts is not None:
            self._attempts = None
            for a in atts:
                a.release()
        slot = self._slot
        if slot is not None:
            self._slot = None
            slot.drop()
        if fe.ctx.worker.access_log.enabled:
            self._log(term)
        fe.exchange_done(self, self.framing.keep_alive and self.req_complete)

    def _log(self, term: str) -> None:
        fe = self.fe
        now = fe.loop.time()
        srv = self.server
        ctx = fe.ctx

        def ms(a: float, b: float) -> int:
            return -1 if a < 0 or b < 0 else int((b - a) * 1000)

        rec = HttpLogRecord(
            client_ip=fe.client_ip,
            client_port=fe.client_port,
            accept_time=time.time() - (now - self.t_start),
            frontend=ctx.conf.name,
            backend=ctx.backend.name,
            server=srv.name if srv is not None else "<NOSRV>",
            t_request=ms(self.t_start, self.t_head),
            t_queue=int(self.t_queue * 1000) if srv is not None else -1,
            t_connect=-1 if self.t_connect < 0 else int(self.t_connect * 1000),
            t_response=ms(self.t_sent, self.t_response),
            t_active=ms(self.t_start, now),
            status=self.status,
            bytes_read=self.bytes_out,
            term=term,
            actconn=ctx.worker.actconn,
            feconn=ctx.feconn,
            beconn=ctx.backend.cur_conns,
            srv_conn=srv.cur_conns if srv is not None else 0,
            retries=self.retries,
            redispatched=self.redispatched,
            srv_queue=0,
            backend_queue=self.q_ahead,
            request_line=self.req.request_line(),
        )
        ctx.worker.access_log.http(rec)
