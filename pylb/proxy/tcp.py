"""TCP mode (`mode: tcp`): one client connection relayed to one server connection.

Life of a session (one `TcpFrontend` per accepted client, contract in `pylb.proxy.state`):

1. accept: count it (or refuse it over `maxconn`), pick a server with the client address
   as hash key; no server -> close the client ("SC", as HAProxy does in TCP mode).
2. connect with `open_connection` under `timeout.connect`; on failure retry up to
   `retries` times, the last retry on another server when `redispatch` is on (HAProxy's
   default `option redispatch -1`), or at once when the failure got the server marked
   down (passive observation, `pylb.health.passive`: each failed connect is reported).
   Bytes the client sends meanwhile are held, and its reading paused after the first
   chunk, so nothing is buffered without bound.
3. relay: each side's bytes are written to the other transport as they arrive. When a
   transport's write buffer crosses the high-water mark its protocol gets `pause_writing`
   and we pause *reading* the opposite side (`FlowControl`), so a fast sender and a slow
   receiver never grow our memory past about 2 x HIGH_WATER per session.
4. half-close: an EOF from one side becomes `write_eof()` to the other, and the other
   direction keeps flowing; the session ends when both directions are closed, or at once
   when either side errors or resets (the other side then gets what is already buffered
   for it, and our FIN; a timeout or `abort()` aborts both sides).
5. timeouts: one entry per session in the worker's timer wheel (`pylb.proxy.deadlines`:
   one uvloop handle per worker, deadlines up to ~10 ms late, never early), moved lazily
   (aiohttp's pattern): reads and writes only store a timestamp; when the entry fires
   early it is filed again for the deadline that is now due, and only a deadline that
   moved earlier re-files it. See `idle_deadline` for which timeout applies when.
6. end: counters, `server.drop()`, the access log record (built only if logging is on).

Every session is registered on its server (`Server.sessions`) from pick to end, so
`Server.shutdown_sessions()` can end them all at once (`server_gone()`): what writer-pin
does to the old writer on every writer change (`pylb.galera.writer`).

Termination states (HAProxy's first two characters): first the cause, `-` normal, `C`/`S`
client/server closed or reset, `c`/`s` client/server-side timeout, `K` killed (abort());
then the phase, `C` connecting, `D` data. "SC" also means no server was available.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

from pylb.health.passive import observation_for, observe
from pylb.health.types import Observation
from pylb.proxy.accesslog import TcpLogRecord
from pylb.proxy.connect import ConnectError, open_connection
from pylb.proxy.flow import FlowControl, set_water_marks
from pylb.proxy.queue import admit_next, on_accept

if TYPE_CHECKING:
    from pylb.config.model import Timeouts
    from pylb.proxy.backend import Server
    from pylb.proxy.deadlines import Token
    from pylb.proxy.queue import Ticket
    from pylb.proxy.state import ListenContext


# Session phases.
CONNECTING = 0
ESTABLISHED = 1
DONE = 2


def client_key(peername: object) -> bytes | None:
    """The balancer's hash key for a client: its packed IP address (IPv4-mapped IPv6 folded
    to IPv4, so a dual-stack listener hashes a client the same as a v4 one)."""
    if not isinstance(peername, tuple) or not peername:
        return None
    host = peername[0]
    if not isinstance(host, str):
        return None
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    try:
        if ":" in host:
            return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        return socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return None


def idle_deadline(
    timeouts: Timeouts,
    phase: int,
    last: float,
    client_paused: bool,
    server_paused: bool,
) -> tuple[float, str]:
    """The session's next idle deadline and who is to blame if it passes ("c" or "s").

    Pure: the decision the session's single timer applies (unit-testable without sockets).
    `last` is the last time any byte moved (read from a side, or a side drained what we
    wrote to it: a write buffer that empties is the peer's activity). `client_paused` /
    `server_paused`: that side's *reading* is paused because the other side does not
    drain; its clock does not run then, the stall is the other side's (HAProxy's
    CF_READ_NOEXP), so a slow reader is blamed, never the fast sender behind it.

    - connecting: `timeout.client` (the connect itself is bounded by `timeout.connect`
      inside `open_connection`);
    - established with `timeout.tunnel` > 0: HAProxy's rule, the tunnel timeout
      supersedes client and server timeouts once the connection is established;
    - established without a tunnel timeout: `timeout.client` and `timeout.server`, the
      shorter one of the sides not paused.
    """
    if phase == CONNECTING:
        return last + timeouts.client, "c"
    tunnel = timeouts.tunnel
    if tunnel and tunnel > 0:
        return last + tunnel, "s" if client_paused and not server_paused else "c"
    client = None if client_paused and not server_paused else timeouts.client
    server = None if server_paused and not client_paused else timeouts.server
    if server is not None and (client is None or server < client):
        return last + server, "s"
    return last + (client if client is not None else timeouts.client), "c"


def observe_connect_failure(server: Server, err: ConnectError) -> None:
    """Passive health observation (HAProxy's `observe layer4`): a failed connect to
    `server` counts as a failed check at once (for writer-pin backends it marks the server
    down: see `pylb.health.scheduler.default_policy`). No-op without an active check."""
    observe(server, observation_for(err.kind), err.info)


class _ServerSide(asyncio.Protocol):
    """The server connection's protocol: forwards every event to its session."""

    __slots__ = ("data_received", "session", "transport")

    def __init__(self, session: TcpFrontend) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        # hot path: the session's handler itself is this protocol's data_received, so
        # the loop calls it without a forwarding frame (uvloop fetches the bound method
        # once, when the transport is made; asyncio looks it up on the instance).
        self.data_received = session._server_data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        session = self.session
        if session.phase == DONE or session._server_side is not self:
            # The session ended (client gone, abort()) or moved to another server
            # (server_gone) while this connect completed.
            transport.abort()  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return self.session._server_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.session._server_side is self:
            self.session._server_lost(exc)

    def pause_writing(self) -> None:
        # The server is not draining what we send: stop reading the client.
        self.session._client_flow.pause_reading()

    def resume_writing(self) -> None:
        self.session._resume(self.session._client_flow)


class TcpFrontend(asyncio.Protocol):
    """One TCP-mode session: the client connection's protocol, owning the server side."""

    __slots__ = (
        "_c_eof",
        "_client_flow",
        "_connect_task",
        "_last",
        "_loop",
        "_parked",
        "_pending",
        "_q_ahead",
        "_s_eof",
        "_server_flow",
        "_server_side",
        "_t_connected",
        "_t_queue",
        "_ticket",
        "_timer",
        "_timer_at",
        "bytes_in",
        "bytes_out",
        "client",
        "ctx",
        "peer",
        "phase",
        "redispatched",
        "retries",
        "server",
        "server_transport",
        "t_accept",
        "term",
    )

    def __init__(self, ctx: ListenContext) -> None:
        self.ctx = ctx
        self._loop = ctx.worker.loop
        self.client: asyncio.Transport | None = None
        self.server_transport: asyncio.Transport | None = None
        self._server_side: _ServerSide | None = None
        self.server: Server | None = None
        self.phase = CONNECTING
        self.term = ""
        self.peer: object = None
        self.t_accept = 0.0
        self._t_connected = -1.0
        self._last = 0.0  # last time a byte moved, either way (idle timeouts)
        self._timer: Token | None = None  # the entry in ctx.worker.deadlines
        self._timer_at = 0.0
        self._client_flow = FlowControl(None)  # pauses reading the client
        self._server_flow = FlowControl(None)  # pauses reading the server
        self._pending: list[bytes] | None = None
        self._c_eof = False
        self._s_eof = False
        self._connect_task: asyncio.Task[None] | None = None
        self.bytes_in = 0  # client -> server
        self.bytes_out = 0  # server -> client
        self.retries = 0
        self.redispatched = False
        self._parked: Ticket | None = None  # waiting for room under the listener's maxconn
        self._ticket: Ticket | None = None  # waiting in the backend queue (server maxconn)
        self._t_queue = 0.0
        self._q_ahead = 0

    # -- client side ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        ctx = self.ctx
        verdict = on_accept(ctx, self, self._loop)
        if verdict is True:
            self._admit(tr)
        elif verdict is False:
            ctx.denied_conns += 1
            self.phase = DONE
            tr.abort()  # refuse: the client sees its connection closed at once
        else:  # parked, unread, until one of the listener's connections closes
            self._parked = verdict
            self.client = tr
            tr.pause_reading()
            ctx.worker.connections.add(self)

    def _admit(self, tr: asyncio.Transport) -> None:
        """Count the session and start it (at accept, or when unparked)."""
        ctx = self.ctx
        worker = ctx.worker
        self.client = tr
        self.t_accept = self._last = self._loop.time()
        worker.actconn += 1
        ctx.feconn += 1
        ctx.total_conns += 1
        backend = ctx.backend
        backend.cur_conns += 1
        backend.total_conns += 1
        if backend.cur_conns > backend.max_conns:
            backend.max_conns = backend.cur_conns
        worker.connections.add(self)
        set_water_marks(tr)
        self._client_flow = FlowControl(tr)
        self.peer = tr.get_extra_info("peername")
        key = client_key(self.peer)
        server = backend.pick(key=key)
        if server is None:
            self._finish("SC")
            return
        self._arm_timer()
        if not server.has_slot():
            # Every server is at its maxconn: wait for a slot (timeout.queue).
            t = backend.queue.wait(self, self._loop, key)
            if t is None:
                self._finish("SQ")
                return
            self._ticket = t
            self._q_ahead = t.ahead
            return
        self.server = server
        server.take()
        server.sessions.add(self)
        self._connect_task = self._loop.create_task(self._connect(server))

    # -- waiting (pylb.proxy.queue.Waiter): parked (grant None) or queued (grant: Server) --

    def queue_granted(self, grant: Server | None) -> None:
        if grant is None:
            self._parked = None
            tr = self.client
            if tr is None or tr.is_closing() or self.phase == DONE:
                admit_next(self.ctx)  # gone meanwhile: the room goes to the next one
                return
            self.ctx.worker.connections.discard(self)
            self._admit(tr)
            tr.resume_reading()
            if self._pending and self.phase == CONNECTING:
                self._client_flow.pause_reading()
            return
        t, self._ticket = self._ticket, None
        if self.phase != CONNECTING:
            grant.drop()  # gone meanwhile: the slot goes to the next one
            return
        if t is not None:
            self._t_queue = self._loop.time() - t.since
        self.server = grant  # its slot was taken for us
        grant.sessions.add(self)
        self._connect_task = self._loop.create_task(self._connect(grant))

    def queue_timeout(self) -> None:
        if self._parked is not None:
            self._parked = None
            self._unpark_close()
            return
        t, self._ticket = self._ticket, None
        if t is not None:
            self._t_queue = self._loop.time() - t.since
        self._finish("sQ")

    def _unpark_close(self) -> None:
        self.ctx.worker.connections.discard(self)
        self.phase = DONE
        tr, self.client = self.client, None
        if tr is not None:
            tr.abort()

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        st = self.server_transport
        if st is not None:
            n = len(data)
            self.bytes_in += n
            self.server.bytes_in += n  # type: ignore[union-attr]  # set while connected
            self.ctx.backend.bytes_in += n
            # hot path: try/except is free in 3.11, contextlib.suppress is a call (aiohttp
            # measured ~6x). uvloop raises RuntimeError on a transport whose handle closed
            # after an error; its connection_lost is already scheduled.
            try:  # noqa: SIM105
                st.write(data)
            except RuntimeError:
                pass
            return
        if self.phase == CONNECTING:
            # Hold what arrives before the server is connected, and stop reading: at most
            # one read's worth is ever buffered here.
            if self._pending is None:
                self._pending = [data]
            else:
                self._pending.append(data)
            if self._parked is not None:
                self.client.pause_reading()  # type: ignore[union-attr]  # uvloop reads anyway
            else:
                self._client_flow.pause_reading()

    def eof_received(self) -> bool:
        self._c_eof = True
        st = self.server_transport
        if st is not None:
            if self._s_eof:
                self._finish("--")
                return True
            if not st.is_closing():
                st.write_eof()
        return True  # keep our write side open: the server may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        t = self._parked
        if t is not None:
            self._parked = None
            if self.ctx.parked is not None:
                self.ctx.parked.cancel(t)
            self._unpark_close()
            return
        self.client = None
        if self.phase != DONE:
            self._finish("CC" if self.phase == CONNECTING else "CD")

    def pause_writing(self) -> None:
        # The client is not draining what we send: stop reading the server.
        self._server_flow.pause_reading()

    def resume_writing(self) -> None:
        self._resume(self._server_flow)

    def _resume(self, flow: FlowControl) -> None:
        """A peer drained its write buffer: that is activity, and the paused side's idle
        clock starts again."""
        self._last = self._loop.time()
        flow.resume_reading()
        if self.phase == ESTABLISHED:
            self._arm_timer()  # rare event; re-arms only if the deadline moved earlier

    # -- connect ----------------------------------------------------------------------

    def _server_factory(self) -> _ServerSide:
        side = self._server_side = _ServerSide(self)
        return side

    async def _connect(self, server: Server) -> None:
        """The session's one task: connect (with retries), then hand over to callbacks."""
        try:
            result = await self._connect_with_retries(server)
        except Exception:
            self._connect_task = None
            self._finish("SC")  # a bug must not leave the client hanging; the task logs it
            raise
        self._connect_task = None  # done: _finish must not cancel the running task
        if isinstance(result, str):
            self._finish(result)
        else:
            self._connected(result)

    async def _connect_with_retries(self, server: Server) -> asyncio.Transport | str:
        """The connected transport, or the termination state when every attempt failed."""
        ctx = self.ctx
        conf = ctx.conf
        retries_left = conf.retries
        while True:
            try:
                tr, _ = await open_connection(
                    self._loop, server.address, self._server_factory, conf.timeout.connect
                )
            except ConnectError as e:
                server.failed_conns += 1
                # Not on this server any more while its fate is decided: observation may
                # mark it down, and its sessions (writer-pin) are then shut down.
                server.sessions.discard(self)
                observe_connect_failure(server, e)
                if retries_left <= 0 or self.phase == DONE:
                    return "sC" if e.kind == "timeout" else "SC"
                retries_left -= 1
                self.retries += 1
                server.retries += 1
                # HAProxy's default: redispatch on the last retry, to another server. A
                # server that is down now (observation just marked it) is not retried at
                # all: go elsewhere at once, in the same client attempt.
                if conf.redispatch and (retries_left == 0 or not server.usable):
                    other = ctx.backend.pick(key=client_key(self.peer), avoid=(server,))
                    if other is not None and other is not server:
                        server.redispatches += 1
                        self._move(server, other)
                        server = other
                        self.redispatched = True
                        continue
                server.sessions.add(self)  # registered again only once the pick is done
                continue
            if server.check is not None:
                observe(server, Observation.CONNECT_OK)  # ends a run of observed errors
            return tr

    def _move(self, old: Server, new: Server) -> None:
        """Account this session on `new` instead of `old` (redispatch)."""
        old.sessions.discard(self)
        old.drop()
        new.take()
        new.sessions.add(self)
        self.server = new

    def server_gone(self, server: Server) -> None:
        """`server` must stop taking traffic now (`Server.shutdown_sessions`: a writer
        change, on-marked-down). An established session is killed (both sides aborted:
        the client must not keep writing through the old writer); one still connecting has
        sent nothing to the server yet, so it is redispatched to the server the balancer
        picks now, or ends ("KC") if there is none."""
        if self.server is not server or self.phase == DONE:
            return
        if self.phase == ESTABLISHED:
            self._finish("KD")
            return
        other = self.ctx.backend.pick(key=client_key(self.peer), avoid=(server,))
        if other is None or other is server:
            self._finish("KC")
            return
        task = self._connect_task
        self._connect_task = None
        side, self._server_side = self._server_side, None
        if side is not None and side.transport is not None:
            side.transport.abort()  # connected, but the result not delivered yet
        # A connect completing later is aborted by _ServerSide.connection_made, and
        # open_connection closes its socket when cancelled before that.
        if task is not None:
            task.cancel()
        server.redispatches += 1
        self._move(server, other)
        self.redispatched = True
        self._connect_task = self._loop.create_task(self._connect(other))

    def _connected(self, tr: asyncio.Transport) -> None:
        if self.phase == DONE:  # client left meanwhile (defensive: the task is cancelled)
            tr.abort()
            return
        now = self._loop.time()
        self._t_connected = self._last = now
        self.phase = ESTABLISHED
        self.server_transport = tr
        set_water_marks(tr)
        self._server_flow = FlowControl(tr)
        pending = self._pending
        self._pending = None
        # Resume first: writing the held bytes may itself pause the client again.
        self._client_flow.resume_reading()
        if pending:
            n = sum(len(c) for c in pending)
            self.bytes_in += n
            self.server.bytes_in += n  # type: ignore[union-attr]  # set while connecting
            self.ctx.backend.bytes_in += n
            tr.write(b"".join(pending))
        if self._c_eof:
            tr.write_eof()
        self._arm_timer()

    # -- server side (called by _ServerSide) ------------------------------------------

    def _server_data(self, data: bytes) -> None:
        self._last = self._loop.time()
        client = self.client
        if client is not None:
            n = len(data)
            self.bytes_out += n
            self.server.bytes_out += n  # type: ignore[union-attr]  # set while connected
            self.ctx.backend.bytes_out += n
            try:  # noqa: SIM105  # hot path, as in data_received
                client.write(data)
            except RuntimeError:
                pass  # connection_lost follows

    def _server_eof(self) -> bool:
        self._s_eof = True
        if self._c_eof:
            self._finish("--")
            return True
        client = self.client
        if client is not None and not client.is_closing():
            client.write_eof()
        return True

    def _server_lost(self, exc: Exception | None) -> None:
        self.server_transport = None
        if self.phase != DONE:
            self._finish("SD")

    # -- timer ------------------------------------------------------------------------

    def _deadline(self) -> tuple[float, str]:
        return idle_deadline(
            self.ctx.conf.timeout,
            self.phase,
            self._last,
            self._client_flow.reading_paused,
            self._server_flow.reading_paused,
        )

    def _arm_timer(self) -> None:
        deadline, _ = self._deadline()
        t = self._timer
        deadlines = self.ctx.worker.deadlines
        if t is not None:
            if self._timer_at <= deadline:
                return  # fires early and is filed again: no cancel/add per event
            deadlines.cancel(self, t)
        self._timer_at = deadline
        self._timer = deadlines.add(self, deadline)

    def _on_timer(self) -> None:
        """Called by the worker's `Deadlines` (the entry is gone then: file it again)."""
        self._timer = None
        if self.phase == DONE:
            return
        deadline, cause = self._deadline()
        if self._loop.time() >= deadline:
            self._finish(cause + ("C" if self.phase == CONNECTING else "D"))
        else:
            self._timer_at = deadline
            self._timer = self.ctx.worker.deadlines.add(self, deadline)

    # -- end --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful stop: a TCP session has no request boundary to stop at, so it is left
        to finish on its own (the worker aborts what remains after hard_stop_after)."""

    def abort(self) -> None:
        """Close both sides now."""
        t = self._parked
        if t is not None:
            self._parked = None
            if self.ctx.parked is not None:
                self.ctx.parked.cancel(t)
            self._unpark_close()
            return
        if self.phase != DONE:
            self._finish("KC" if self.phase == CONNECTING else "KD")

    def _finish(self, term: str) -> None:
        """End the session once: close both transports, account, log. Idempotent.

        A peer that closed or reset ("--", "CD", "SD", "SC") gets what is already buffered
        for it flushed before our FIN; a stalled or killed session (timeouts, "K") is
        aborted, since flushing to a peer that does not read would never finish."""
        if self.phase == DONE:
            return
        phase = self.phase
        self.phase = DONE
        self.term = term
        if self._timer is not None:
            self.ctx.worker.deadlines.cancel(self, self._timer)
            self._timer = None
        task = self._connect_task
        if task is not None:
            self._connect_task = None
            task.cancel()
        gentle = term[0] in "-CS"
        client = self.client
        if client is not None:
            self._close(client, gentle)
        st = self.server_transport
        if st is None and self._server_side is not None:
            st = self._server_side.transport  # connected, result not delivered yet
        if st is not None:
            self._close(st, gentle)
        self._account(phase)

    def _close(self, tr: asyncio.Transport, gentle: bool) -> None:
        if gentle and tr.get_write_buffer_size():
            # close() flushes first; bound the flush by the idle timeout, because a peer
            # that stopped reading would otherwise hold the socket forever.
            tr.close()
            t = self.ctx.conf.timeout
            linger = t.tunnel if t.tunnel and t.tunnel > 0 else max(t.client, t.server)
            self._loop.call_later(linger, _abort_if_open, tr)
        elif gentle:
            tr.close()
        else:
            tr.abort()

    def _account(self, phase: int) -> None:
        ctx = self.ctx
        worker = ctx.worker
        server = self.server
        t = self._ticket
        if t is not None:
            self._ticket = None
            ctx.backend.queue.cancel(t)
        if worker.access_log.enabled:
            worker.access_log.tcp(self._log_record())
        worker.actconn -= 1
        ctx.feconn -= 1
        ctx.backend.cur_conns -= 1
        worker.connections.discard(self)
        if server is not None:
            server.sessions.discard(self)
            server.drop()
        admit_next(ctx)

    def _log_record(self) -> TcpLogRecord:
        now = self._loop.time()
        peer = self.peer
        ip, port = ("-", 0)
        if isinstance(peer, tuple) and len(peer) >= 2:
            ip, port = str(peer[0]), int(peer[1])
        ctx = self.ctx
        server = self.server
        t0 = self.t_accept
        tc = -1 if self._t_connected < 0 else round((self._t_connected - t0) * 1000)
        return TcpLogRecord(
            client_ip=ip,
            client_port=port,
            accept_time=time.time() - (now - t0),
            frontend=ctx.conf.name,
            backend=ctx.backend.name,
            server=server.name if server is not None else "<NOSRV>",
            t_queue=round(self._t_queue * 1000) if server is not None else -1,
            t_connect=tc,
            t_total=round((now - t0) * 1000),
            bytes_read=self.bytes_out,
            term=self.term,
            actconn=ctx.worker.actconn,
            feconn=ctx.feconn,
            beconn=ctx.backend.cur_conns,
            srv_conn=server.cur_conns if server is not None else 0,
            retries=self.retries,
            redispatched=self.redispatched,
            srv_queue=0,
            backend_queue=self._q_ahead,
        )


def _abort_if_open(tr: asyncio.Transport) -> None:
    """Linger bound of a graceful close: drop what a non-reading peer never took."""
    if tr.get_write_buffer_size():
        tr.abort()
