"""HTTP/1.x for the proxy, sans-IO: bytes in, events out; heads out as bytes.

httptools (llhttp) does the tokenising and the framing; this module adds what llhttp does
not enforce (FACTS.md): one Host on HTTP/1.1, a bound on the head size and the header
count, a strict Content-Length, only `chunked` as a request transfer coding, no CONNECT.
It never touches a socket or a clock, so every rule is unit-tested by feeding bytes, one
byte at a time too (h11's habit).

Events returned by `feed()` (a list, in wire order):

- `Request` / `Response`: a validated head;
- `bytes`: a piece of body exactly as httptools gave it (already de-chunked), to be passed
  straight to the other side's transport (no copy);
- `END`: the message is complete;
- `Upgraded(rest)`: the parser stopped after an upgrade (101 response, or an Upgrade
  request); `rest` is whatever followed the head in the same read.

The request and the response side share the validation and the event shape; only the
head's fields differ (h11's "the machine does not know which side it is on").
"""

from __future__ import annotations

import re
from http import HTTPStatus

import httptools

from pylb.proxy.errors import ClientProtocolError, ProxyProtocolError, UpstreamProtocolError

# Limits, each with its reason (h11's habit).
# 32 KiB of head: HAProxy's default buffer is 16 KiB, but OpenStack clients send PKI-era
# keystone tokens and long Nova query strings; nginx's large_client_header_buffers allows
# 4 x 8 KiB per line. Above this the client gets 431.
MAX_HEAD_SIZE = 32 * 1024
# HAProxy's tune.http.maxhdr is 101; Apache's LimitRequestFields 100.
MAX_HEADERS = 100

# Response status codes that never carry a body (RFC 9110 §6.4.1), besides HEAD responses.
NO_BODY_STATUS = frozenset({204, 304})

# RFC 9110 §7.6.1 hop-by-hop headers, plus the framing headers we always rebuild.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
# Headers a `Connection:` token may never remove: dropping them would change the message's
# meaning for the server (a client could send `Connection: host` to smuggle past a check).
_PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_CL_RE = re.compile(rb"[0-9]{1,18}\Z")  # never a bare int() on a framing number (FACTS.md)
_TOKEN_SPLIT = re.compile(rb"[ \t]*,[ \t]*")
# hot path: the Connection values nearly every message carries, split once at import
# (the regex split costs about a microsecond per message).
_CONN_TOKENS: dict[bytes, tuple[bytes, ...]] = {
    v: (v,) for v in (b"keep-alive", b"close", b"upgrade", b"te")
}
# Connection tokens that never need a pass over the kept headers: hop-by-hop names were
# not kept in the first place, and protected ones are never removed.
_NOT_DROPPED = HOP_BY_HOP | _PROTECTED
# Shared empty placeholder between messages (an idle keep-alive connection keeps no
# per-message list); never appended to: on_message_begin installs a fresh one.
_NO_URL: list[bytes] = []


def _status_lines() -> dict[int, bytes]:
    lines = {}
    for st in HTTPStatus:
        lines[st.value] = b"HTTP/1.1 %d %s\r\n" % (st.value, st.phrase.encode("latin-1"))
    return lines


# Precomputed at import (uvicorn's habit): a response head starts with one dict lookup.
STATUS_LINES: dict[int, bytes] = _status_lines()


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")
    return line


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()


class Upgraded:
    """The parser stopped: the rest of the stream is another protocol (or not yet parsed)."""

    __slots__ = ("rest",)

    def __init__(self, rest: bytes) -> None:
        self.rest = rest

    def __repr__(self) -> str:
        return f"Upgraded({self.rest!r})"


class Request:
    """A validated request head. `headers` are the end-to-end headers to forward."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
        "xff",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = b"1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None  # Upgrade header value when Connection has "upgrade"
        self.expect_continue = False
        self.host: bytes | None = None
        self.xff: bytes | None = None  # incoming X-Forwarded-For, joined

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def replayable(self) -> bool:
        """Safe to send again on a new connection if the first one died before any answer."""
        return self.method in IDEMPOTENT_METHODS and not self.has_body

    def request_line(self) -> str:
        method = self.method.decode("latin-1")
        return f"{method} {self.target.decode('latin-1')} HTTP/{self.version.decode()}"

    def __repr__(self) -> str:
        return f"<Request {self.request_line()}>"


class Response:
    """A validated response head."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = b"1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade: bytes | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class _Stop(Exception):
    """Raised inside a callback to stop llhttp (HEAD response head complete)."""


def _parse_cl(value: bytes, err: type[ProxyProtocolError]) -> int:
    if not _CL_RE.match(value):
        raise _mkerr(err, "invalid Content-Length")
    return int(value)


def _mkerr(err: type[ProxyProtocolError], msg: str, status: int = 400) -> ProxyProtocolError:
    if err is ClientProtocolError:
        return ClientProtocolError(msg, status)
    return err(msg)


class _Reader:
    """Shared part of both directions: callbacks -> events, head accounting, limits."""

    __slots__ = (
        "_error",
        "_events",
        "_hdrs",
        "_head",
        "_head_bytes",
        "_knames",
        "_parser",
        "_te",
        "_upgrade",
        "in_head",
        "in_message",
        "keep_alive",
        "stopped",
    )

    _err: type[ProxyProtocolError] = ClientProtocolError

    def __init__(self) -> None:
        self._events: list = []
        self._error: ProxyProtocolError | None = None
        self._head: Request | Response | None = None
        self._hdrs: list[tuple[bytes, bytes]] = []  # the headers of the head being parsed
        self._knames: list[bytes] = []  # lower-cased names of what _scan_headers kept
        self._head_bytes = 0
        self._te: list[bytes] = []
        self._upgrade: bytes | None = None
        self.in_head = False  # between the first byte of a head and its end
        self.in_message = False  # between the first byte and the end of a message
        self.keep_alive = True  # of the last message head
        self.stopped = False  # after an upgrade / `Connection: close`: no more parsing

    # -- httptools callbacks -------------------------------------------------------------
    # hot path: these run once per header of every message on both sides (measured: the
    # callbacks, not llhttp, are most of the parse time), so each does as little as it can.
    def on_header(self, name: bytes, value: bytes) -> None:
        n = self._head_bytes + len(name) + len(value) + 4
        self._head_bytes = n
        h = self._hdrs
        h.append((name, value))
        if len(h) > MAX_HEADERS:
            self._fail("too many header fields", 431)
        if n > MAX_HEAD_SIZE:
            self._fail("head too large", 431)

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self._events.append(END)

    # -- helpers ---------------------------------------------------------------------------
    def _fail(self, msg: str, status: int = 400) -> None:
        self._error = _mkerr(self._err, msg, status)
        raise self._error

    def _scan_headers(self, head: Request | Response) -> list[tuple[bytes, bytes]]:
        """Split hop-by-hop from end-to-end headers; fill framing fields of `head`.
        The lower-cased names of the kept headers are left in `_knames`."""
        kept: list[tuple[bytes, bytes]] = []
        knames: list[bytes] = []
        te: list[bytes] = []
        tokens: list[bytes] | None = None
        cl: bytes | None = None
        self._upgrade = None
        for item in head.headers:
            lname = item[0].lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    v = item[1].strip().lower()
                    t = _CONN_TOKENS.get(v)
                    if tokens is None:
                        tokens = []
                    tokens.extend(_TOKEN_SPLIT.split(v) if t is None else t)
                elif lname == b"transfer-encoding":
                    te.extend(_TOKEN_SPLIT.split(item[1].strip().lower()))
                elif lname == b"content-length":
                    if cl is not None:  # llhttp refuses this already; keep the rule local
                        self._fail("duplicate Content-Length")
                    cl = item[1].strip()
                elif lname == b"upgrade":
                    self._upgrade = item[1]
            else:
                kept.append(item)
                knames.append(lname)
        if te:
            if cl is not None:
                self._fail("both Content-Length and Transfer-Encoding")
            head.chunked = te[-1] == b"chunked"
        elif cl is not None:
            head.content_length = _parse_cl(cl, self._err)
        if tokens:
            # hop-by-hop names are not in `kept` already: only other names need a pass
            drop = {t for t in tokens if t and t not in _NOT_DROPPED}
            if drop:
                pairs = [(h, n) for h, n in zip(kept, knames, strict=True) if n not in drop]
                kept = [h for h, _ in pairs]
                knames = [n for _, n in pairs]
        self._te = te
        self._knames = knames
        return kept


class RequestReader(_Reader):
    """The client side: parses requests, validates them, yields events."""

    __slots__ = ("_url",)
    _err = ClientProtocolError

    def __init__(self) -> None:
        super().__init__()
        self._url: list[bytes] = []
        self._parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.in_head = True
        self.in_message = True
        self._head_bytes = 0
        head = self._head = Request()
        self._hdrs = head.headers
        self._url = []

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_SIZE:
            self._fail("request line too long", 431)

    def on_headers_complete(self) -> None:
        self.in_head = False
        req: Request = self._head  # type: ignore[assignment]
        self._head = None  # the exchange holds it; an idle connection need not
        p = self._parser
        req.method = p.get_method()
        url = self._url
        req.target = url[0] if len(url) == 1 else b"".join(url)
        self._url = _NO_URL
        version = p.get_http_version()
        if version == "1.1":
            req.version = b"1.1"
        elif version == "1.0":
            req.version = b"1.0"
        else:
            self._fail(f"unsupported HTTP version {version}", 505)
        if req.method == b"CONNECT":
            self._fail("CONNECT is not supported", 501)
        req.keep_alive = self.keep_alive = p.should_keep_alive()
        kept = self._scan_headers(req)
        te = self._te
        if te:
            if req.version == b"1.0":
                self._fail("Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 §6.1
            if te != [b"chunked"]:
                # llhttp refuses a request whose last coding is not chunked; we also refuse
                # any other coding before it: the servers behind us would not all agree.
                self._fail("unsupported Transfer-Encoding", 501)
        hosts = 0
        xff: list[bytes] | None = None
        fwd: list[tuple[bytes, bytes]] = []
        for item, lname in zip(kept, self._knames, strict=True):
            if lname == b"host":
                hosts += 1
                req.host = item[1]
                fwd.append(item)
            elif lname == b"x-forwarded-for":
                if xff is None:
                    xff = []
                xff.append(item[1])
            elif lname == b"expect":
                if item[1].strip().lower() == b"100-continue":
                    req.expect_continue = True
                fwd.append(item)
            else:
                fwd.append(item)
        if hosts > 1:
            self._fail("more than one Host header")
        if hosts == 0 and req.version == b"1.1":
            self._fail("missing Host header")
        if xff:
            req.xff = b", ".join(xff)
        if self._upgrade is not None and p.should_upgrade():
            req.upgrade = self._upgrade
        req.headers = fwd
        self._hdrs = []  # trailers (llhttp reports them as headers) are counted and dropped
        self._events.append(req)

    def on_message_complete(self) -> None:
        _Reader.on_message_complete(self)
        if not self.keep_alive:
            self.stopped = True

    def feed(self, data: bytes) -> list:
        """Parse `data`; return the events. Raises ClientProtocolError."""
        if self.stopped:
            return []
        was_in_head = self.in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            off = exc.args[0]
            self._events.append(Upgraded(data[off:]))
            self.stopped = True
        except httptools.HttpParserError as exc:
            if self.stopped and self._error is None and not self.in_message:
                # llhttp refuses bytes after a `Connection: close` request; the request
                # itself is fine and is answered, what follows is ignored.
                ev = self._events
                self._events = []
                return ev
            self._events = []
            self.stopped = True
            if self._error is not None:
                raise self._error from None
            raise ClientProtocolError(str(exc) or "invalid request") from None
        if self.in_head:
            # A head still incomplete after this read: bound what httptools buffers for us.
            if was_in_head:
                self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_SIZE:
                self.stopped = True
                self._events = []
                raise ClientProtocolError("head too large", 431)
        ev = self._events
        self._events = []
        return ev

    def resume(self, data: bytes) -> list:
        """Continue parsing after an Upgrade request the server declined."""
        self.stopped = False
        return self.feed(data) if data else []


class ResponseReader(_Reader):
    """The server side: parses responses to the requests we sent, one at a time."""

    __slots__ = ("_head_only", "eof_body", "head_clean")
    _err = UpstreamProtocolError

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self.eof_body = False  # the body of the current response ends at EOF
        self.head_clean = True  # a HEAD response ended exactly at the end of a read

    def expect(self, head_request: bool) -> None:
        """Tell the parser what the next response answers (HEAD responses have no body)."""
        self._head_only = head_request
        self.head_clean = True

    def on_message_begin(self) -> None:
        self.in_head = True
        self.in_message = True
        self._head_bytes = 0
        head = self._head = Response()
        self._hdrs = head.headers
        self.eof_body = False

    def on_status(self, reason: bytes) -> None:
        self._head_bytes += len(reason)
        self._head.reason += reason  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.in_head = False
        resp: Response = self._head  # type: ignore[assignment]
        p = self._parser
        resp.status = p.get_status_code()
        version = p.get_http_version()
        if version == "1.1":
            resp.version = b"1.1"
        elif version == "1.0":
            resp.version = b"1.0"
        else:
            self._fail(f"unsupported HTTP version {version}")
        resp.keep_alive = self.keep_alive = p.should_keep_alive()
        resp.headers = self._scan_headers(resp)
        self._hdrs = []  # trailers (llhttp reports them as headers) are counted and dropped
        resp.upgrade = self._upgrade
        st = resp.status
        if self._head_only or st < 200 or st in NO_BODY_STATUS:
            resp.chunked = False
        elif not resp.chunked and resp.content_length is None:
            self.eof_body = True
            resp.keep_alive = self.keep_alive = False
        self._events.append(resp)
        if self._head_only and st >= 200:
            # httptools cannot tell llhttp to skip the body (F_SKIPBODY): stop it here and
            # start a fresh parser for the next response.
            self.in_message = False
            self._events.append(END)
            raise _Stop

    def feed(self, data: bytes) -> list:
        """Parse `data`; return the events. Raises UpstreamProtocolError."""
        if self.stopped:
            return []
        was_in_head = self.in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            off = exc.args[0]
            self._events.append(Upgraded(data[off:]))
            self.stopped = True
        except httptools.HttpParserCallbackError as exc:
            if self._error is not None:
                self._events = []
                self.stopped = True
                raise self._error from None
            if isinstance(exc.__context__, _Stop):
                self._parser = httptools.HttpResponseParser(self)
                self._head_only = False
                # Nothing may follow a HEAD response; if something did, the connection's
                # framing is unknown from here on and it must not be reused.
                self.head_clean = data.endswith(b"\r\n\r\n")
                if not self.head_clean:
                    self.keep_alive = False
                    self.stopped = True
            else:
                raise UpstreamProtocolError(str(exc)) from None
        except httptools.HttpParserError as exc:
            self._events = []
            self.stopped = True
            if self._error is not None:
                raise self._error from None
            raise UpstreamProtocolError(str(exc) or "invalid response") from None
        if self.in_head:
            if was_in_head:
                self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_SIZE:
                self.stopped = True
                self._events = []
                raise UpstreamProtocolError("response head too large")
        ev = self._events
        self._events = []
        return ev

    def feed_eof(self) -> list:
        """The server closed. Completes a close-delimited body; otherwise an error if a
        message was in progress (truncated), nothing if between messages."""
        if self.in_message:
            if self.eof_body and not self.in_head:
                self.in_message = False
                return [END]
            raise UpstreamProtocolError("server closed in the middle of a response")
        return []


# -- serialisation -------------------------------------------------------------------------

_CRLF = b"\r\n"


def serialize_request_head(
    req: Request,
    client_ip: bytes | None,
    forwardfor: bool,
) -> bytes:
    """The head we send to the server: end-to-end headers, rebuilt framing, our own
    Connection header, and X-Forwarded-For/Proto when `forwardfor`."""
    parts = [req.method, b" ", req.target, b" HTTP/", req.version, _CRLF]
    if forwardfor:
        for name, value in req.headers:
            if name.lower() != b"x-forwarded-proto":
                parts += (name, b": ", value, _CRLF)
        if client_ip is not None:
            if req.xff:
                parts += (b"X-Forwarded-For: ", req.xff, b", ", client_ip, _CRLF)
            else:
                parts += (b"X-Forwarded-For: ", client_ip, _CRLF)
        parts.append(b"X-Forwarded-Proto: http\r\n")
    else:
        for name, value in req.headers:
            parts += (name, b": ", value, _CRLF)
        if req.xff:
            parts += (b"X-Forwarded-For: ", req.xff, _CRLF)
    if req.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif req.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % req.content_length)
    if req.upgrade is not None:
        parts += (b"Upgrade: ", req.upgrade, b"\r\nConnection: upgrade\r\n")
    elif req.version == b"1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(_CRLF)
    return b"".join(parts)


class ResponseFraming:
    """How a response is framed toward the client: decided once per response (pure)."""

    __slots__ = ("chunk", "keep_alive")

    def __init__(self, chunk: bool, keep_alive: bool) -> None:
        self.chunk = chunk  # re-chunk the body (server sent chunked or close-delimited)
        self.keep_alive = keep_alive


def response_framing(
    req: Request, resp: Response, eof_body: bool, closing: bool
) -> ResponseFraming:
    """Decide the client-side framing of `resp` to `req`.

    `closing`: the proxy wants to close the client connection after this response
    (shutdown, request body not fully read, declined upgrade ...).
    """
    keep_alive = req.keep_alive and not closing
    if req.method == b"HEAD" or resp.status < 200 or resp.status in NO_BODY_STATUS:
        return ResponseFraming(False, keep_alive)
    if resp.chunked or eof_body:
        if req.version == b"1.1":
            return ResponseFraming(True, keep_alive)
        return ResponseFraming(False, False)  # HTTP/1.0 client: the close delimits the body
    return ResponseFraming(False, keep_alive)


def serialize_response_head(req: Request, resp: Response, framing: ResponseFraming) -> bytes:
    """The head we send to the client (one transport.write per response head)."""
    parts = [status_line(resp.status, resp.reason)]
    for name, value in resp.headers:
        parts += (name, b": ", value, _CRLF)
    st = resp.status
    if st == 101:
        parts.append(b"Connection: upgrade\r\n")
        if resp.upgrade is not None:
            parts += (b"Upgrade: ", resp.upgrade, _CRLF)
    elif st < 200:
        pass
    else:
        if framing.chunk:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif resp.content_length is not None and st != 204:
            parts.append(b"Content-Length: %d\r\n" % resp.content_length)
        if req.version == b"1.1":
            if not framing.keep_alive:
                parts.append(b"Connection: close\r\n")
        elif framing.keep_alive:
            parts.append(b"Connection: keep-alive\r\n")
    parts.append(_CRLF)
    return b"".join(parts)


def chunk_header(n: int) -> bytes:
    return b"%x\r\n" % n


LAST_CHUNK = b"0\r\n\r\n"
