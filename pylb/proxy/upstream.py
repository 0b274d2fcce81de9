"""One keep-alive connection from the proxy to a server (the asyncio Protocol side).

It owns the transport, the response parser and the idle-expiry timer; everything about
the request it carries belongs to its owner, the current `Exchange`, which it calls back.
The pool sees it only through predicates (`is_idle`, `has_expired`, `is_closed`), as
httpcore's pool does.

States, and who moves them (every state has an owner and a reap rule, the lesson of
httpcore #550/#785):

- CONNECTING: inside `open_connection`; owned by the exchange's connect task, which
  closes the connection if the exchange is gone when the connect completes.
- ACTIVE: carrying one exchange (`owner` set); the exchange releases it to the pool or
  closes it when the exchange ends, and is told when the server closes.
- IDLE: in `server.idle`; any byte or EOF from the server makes it CLOSED at once (an idle
  server has nothing to say: it is closing, or its framing went wrong), and so does its
  expiry timer.
- CLOSED: final; the pool drops it on sight.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import TYPE_CHECKING, Any

from pylb.proxy.flow import FlowControl, set_water_marks
from pylb.proxy.h1 import ResponseReader

if TYPE_CHECKING:
    from pylb.proxy.backend import Server


class UpState(enum.IntEnum):
    CONNECTING = 0
    ACTIVE = 1
    IDLE = 2
    CLOSED = 3


CONNECTING, ACTIVE, IDLE, CLOSED = UpState


class UpstreamConn(asyncio.Protocol):
    __slots__ = (
        "_timer",
        "expire_at",
        "flow",
        "loop",
        "owner",
        "reader",
        "server",
        "state",
        "transport",
        "uses",
    )

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.state = CONNECTING
        self.owner: Any = None  # the Exchange using this connection (ACTIVE only)
        self.expire_at = 0.0
        self.uses = 0  # requests sent on this connection; > 0 means "reused"
        self._timer: asyncio.TimerHandle | None = None
        self.flow = FlowControl(None)

    # -- predicates (what the pool may look at) -------------------------------------------
    def is_idle(self) -> bool:
        return self.state is IDLE

    def is_closed(self) -> bool:
        return self.state is CLOSED

    def has_expired(self, now: float) -> bool:
        return self.state is not IDLE or now >= self.expire_at

    # -- state changes ----------------------------------------------------------------------
    def activate(self, owner: Any) -> None:
        self.state = ACTIVE
        self.owner = owner
        self.uses += 1

    def set_idle(self, expire_at: float) -> None:
        """Enter IDLE. One timer handle per connection, moved lazily: if one is armed
        already (it fires at an earlier expiry) it re-arms itself when it fires."""
        self.state = IDLE
        self.owner = None
        self.expire_at = expire_at
        flow = self.flow
        if flow.reading_paused:
            flow.resume_reading()  # idle: we must see an EOF from the server at once
        if self._timer is None:
            self._timer = self.loop.call_at(expire_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state is not IDLE:
            return
        if self.loop.time() >= self.expire_at:
            self.close()
        else:
            self._timer = self.loop.call_at(self.expire_at, self._on_timer)

    def close(self) -> None:
        """Close now (idempotent); an IDLE connection also leaves the pool."""
        prev = self.state
        self.state = CLOSED
        self.owner = None
        if prev is IDLE:
            _discard(self.server.idle, self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        t = self.transport
        self.close()
        if t is not None:
            t.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_water_marks(self.transport)  # type: ignore[arg-type]
        self.flow = FlowControl(self.transport)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_data(data)
        else:
            self.close()  # bytes on an idle connection: the framing is lost

    def eof_received(self) -> bool:
        owner = self.owner
        if owner is not None:
            return owner.upstream_eof()
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        self.close()
        if owner is not None:
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_pause_writing()

    def resume_writing(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_resume_writing()

    def __repr__(self) -> str:
        return f"<UpstreamConn {self.server.key} {self.state.name} uses={self.uses}>"


def _discard(lst: list, item: object) -> None:
    with contextlib.suppress(ValueError):
        lst.remove(item)
