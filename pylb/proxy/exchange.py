"""One request/response through the HTTP proxy: chosen server, retries, timings, log.

The frontend (`HttpFrontend`, one per client connection) creates one `Exchange` per
request and feeds it the request events; the upstream connection (`UpstreamConn`) calls it
back with the server's bytes. An exchange never blocks the loop and, when the pool has an
idle connection, never creates a task: the request head is written from the client's
`data_received` callback and the response from the server's (uvicorn's
connection/cycle split; the connect alone is a task).

Errors are answered as HAProxy answers them: no usable server or connect failure after
the retries -> 503; the server closes, resets or sends garbage before its response head
-> 502; no response head within `timeout.server` -> 504. After the head was relayed an
error can only cut the client connection. Termination states are HAProxy's 4 characters.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pylb.proxy import pool
from pylb.proxy.accesslog import HttpLogRecord
from pylb.proxy.connect import ConnectError, open_connection
from pylb.proxy.errors import UpstreamProtocolError
from pylb.proxy.flow import HIGH_WATER
from pylb.proxy.h1 import (
    END,
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
    from pylb.proxy.backend import Server
    from pylb.proxy.frontend import HttpFrontend

_CRLF = b"\r\n"
RETRY_TURNAROUND = 1.0  # HAProxy: min(timeout connect, 1 s) before retrying the same server
_NO_FRAMING = ResponseFraming(False, True)


def observe_server_failure(server: Server, kind: str) -> None:
    """Passive health observation seam (issue 3): called on every connect failure
    (`kind` = ConnectError.kind) and on a server that dies or times out before its response
    head ('reset', 'invalid', 'timeout'). No-op until health checks land."""


class Exchange:
    __slots__ = (
        "_task",
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
        "redispatched",
        "req",
        "req_complete",
        "resp_done",
        "resp_head_sent",
        "resp_seen",
        "retries",
        "server",
        "stale_retried",
        "status",
        "t_connect",
        "t_head",
        "t_response",
        "t_sent",
        "t_start",
        "tunnel",
        "up",
        "upgrading",
    )

    def __init__(self, fe: HttpFrontend, req: Request, t_start: float, t_head: float) -> None:
        self.fe = fe
        self.req = req
        self.server: Server | None = None
        self.up: UpstreamConn | None = None
        self.head = b""
        self.pending: list = []  # body pieces / END received before the upstream is ready
        self.pending_bytes = 0
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
        self.t_connect = -1.0
        self.t_sent = -1.0
        self.t_response = -1.0
        self.last_srv = t_head
        self._task = None

    # -- start: pick, pool, connect ----------------------------------------------------------
    def start(self) -> None:
        fe = self.fe
        backend = fe.ctx.backend
        srv = backend.pick(fe.lb_key)
        if srv is None:
            self._fail(503, "SC")
            return
        self._use(srv)
        self.head = serialize_request_head(self.req, fe.client_ip_b, fe.conf.forwardfor)
        conn = pool.acquire(srv, fe.loop.time())
        if conn is not None:
            self.t_connect = 0.0
            self._attach(conn)
        else:
            self._connect()

    def _use(self, srv: Server) -> None:
        if self.server is not None:
            self.server.drop()
        self.server = srv
        srv.take()

    def _connect(self) -> None:
        self._task = self.fe.loop.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        fe = self.fe
        loop = fe.loop
        conf = fe.conf
        backend = fe.ctx.backend
        while True:
            srv = self.server
            assert srv is not None
            t0 = loop.time()
            try:
                _, conn = await open_connection(
                    loop, srv.address, lambda s=srv: UpstreamConn(s, loop), conf.timeout.connect
                )
            except ConnectError as e:
                srv.failed_conns += 1
                observe_server_failure(srv, e.kind)
                if self.done:
                    return
                if self.retries >= conf.retries:
                    self._fail(503, "SC")
                    return
                self.retries += 1
                srv.retries += 1
                if conf.redispatch and self.retries == conf.retries:
                    # HAProxy's `option redispatch`: the last retry goes to another server.
                    alt = backend.pick(fe.lb_key, avoid=(srv,))
                    if alt is not None and alt is not srv:
                        self.redispatched = True
                        srv.redispatches += 1
                        self._use(alt)
                        continue
                if e.kind != "timeout":
                    # HAProxy's turn-around: a server that refused us is likely restarting;
                    # retrying it at once would only fail again.
                    await asyncio.sleep(min(conf.timeout.connect, RETRY_TURNAROUND))
                    if self.done:
                        return
                continue
            except Exception:  # an unexpected local error: answer rather than hang
                if not self.done:
                    self._fail(503, "SC")
                return
            if self.done:
                conn.close()
                return
            self.t_connect = loop.time() - t0
            self._attach(conn)
            return

    def _attach(self, conn: UpstreamConn) -> None:
        """Send the head (and what body arrived meanwhile) on a connected upstream."""
        self.up = conn
        conn.activate(self)
        conn.reader.expect(self.req.method == b"HEAD")
        if conn.transport is None or conn.transport.is_closing():
            # The server closed (or spoke first) before we could send anything.
            self._server_failed("reset")
            return
        fe = self.fe
        now = fe.loop.time()
        self.t_sent = self.last_srv = now
        t = conn.transport
        assert t is not None
        t.write(self.head)
        self._count_in(len(self.head))
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

    def request_end(self) -> None:
        self.req_complete = True
        if self.done:
            return
        up = self.up
        if up is not None and up.state is ACTIVE:
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
        self.resp_seen = True
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
        t = self.fe.transport
        last = len(events) - 1
        for i, ev in enumerate(events):
            if type(ev) is bytes:
                n = len(ev)
                if self.framing.chunk:
                    t.writelines((chunk_header(n), ev, _CRLF))
                else:
                    t.write(ev)
                self._count_out(n)
            elif ev is END:
                if self.upgrading:
                    continue
                if self.status >= 200:
                    self._response_done(trailing=i < last)
                    return
            elif type(ev) is Response:
                if not self._on_response(ev):
                    return
            elif type(ev) is Upgraded:
                self._start_tunnel(ev.rest)
                return

    def _count_out(self, n: int) -> None:
        self.bytes_out += n
        self.server.bytes_out += n  # type: ignore[union-attr]
        self.fe.ctx.backend.bytes_out += n

    def _on_response(self, resp: Response) -> bool:
        fe = self.fe
        req = self.req
        if self.t_response < 0:
            self.t_response = fe.loop.time()
        st = resp.status
        if st < 200:
            if st == 101:
                if req.upgrade is None:
                    self._server_failed("invalid")
                    return False
                self.upgrading = True
                self.status = 101
                head = serialize_response_head(req, resp, _NO_FRAMING)
                fe.transport.write(head)
                self._count_out(len(head))
                self.resp_head_sent = True
            elif req.version == b"1.1":  # interim responses are relayed to HTTP/1.1 clients
                head = serialize_response_head(req, resp, _NO_FRAMING)
                fe.transport.write(head)
                self._count_out(len(head))
            return True
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
        fe.transport.write(head)
        self._count_out(len(head))
        self.resp_head_sent = True
        return True

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
                up.reader.expect(False)
                pool.release(self.server, up, fe.loop.time(), fe.pool_expiry)  # type: ignore[arg-type]
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
        if not self.resp_head_sent:
            if stale and not self.stale_retried and self.req.replayable and self.req_complete:
                # A pooled connection the server closed just as we reused it: the request
                # never reached the application. Send it again on a fresh connection.
                self.stale_retried = True
                self.resp_seen = False
                self._connect()
                return
            observe_server_failure(srv, kind)  # type: ignore[arg-type]
            if self._replay_elsewhere():
                return
            srv.resp_errors += 1  # type: ignore[union-attr]
            self._fail(502, "SH")
        else:
            srv.resp_errors += 1  # type: ignore[union-attr]
            self._cut("SD--")

    def _replay_elsewhere(self) -> bool:
        """Seam for issue 3: replay an idempotent request whose connection died before the
        first response byte on another server (`pick(avoid=(server,))`), as a retry.
        Returns True when it took over the exchange. No replay yet: always False."""
        return False

    def server_timeout(self) -> None:
        if self.done:
            return
        srv = self.server
        self._close_upstream()
        if not self.resp_head_sent:
            observe_server_failure(srv, "timeout")  # type: ignore[arg-type]
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
        srv = self.server
        if srv is not None:
            srv.drop()
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
            t_queue=0 if srv is not None else -1,
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
            backend_queue=0,
            request_line=self.req.request_line(),
        )
        ctx.worker.access_log.http(rec)
