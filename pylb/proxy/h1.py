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
import types
from collections.abc import Callable
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
# What each common Connection value asks to remove besides hop-by-hop fields.
_CONN_DROPS: dict[bytes, tuple[bytes, ...]] = {
    v: tuple(t for t in ts if t not in _NOT_DROPPED) for v, ts in _CONN_TOKENS.items()
}
# What the proxy does with a field it interprets (_Reader._special); everything else is
# forwarded as it came.
FIELD_HOP = 0  # hop-by-hop, dropped
FIELD_CONNECTION = 1
FIELD_CONTENT_LENGTH = 2
FIELD_TRANSFER_ENCODING = 3
FIELD_UPGRADE = 4
FIELD_HOST = 5  # request side from here on
FIELD_XFF = 6
FIELD_EXPECT = 7
FIELD_XFP = 8
_HOP_FIELDS: dict[bytes, int] = {
    b"connection": FIELD_CONNECTION,
    b"keep-alive": FIELD_HOP,
    b"proxy-connection": FIELD_HOP,
    b"te": FIELD_HOP,
    b"trailer": FIELD_HOP,
    b"transfer-encoding": FIELD_TRANSFER_ENCODING,
    b"upgrade": FIELD_UPGRADE,
    b"content-length": FIELD_CONTENT_LENGTH,
}
assert set(_HOP_FIELDS) == HOP_BY_HOP
_REQUEST_FIELDS: dict[bytes, int] = {
    **_HOP_FIELDS,
    b"host": FIELD_HOST,
    b"x-forwarded-for": FIELD_XFF,
    b"expect": FIELD_EXPECT,
    b"x-forwarded-proto": FIELD_XFP,
}
_HOP_LENS = frozenset(len(n) for n in _HOP_FIELDS)
_REQUEST_LENS = frozenset(len(n) for n in _REQUEST_FIELDS)
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
        "xfp",
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
        self.xfp = False  # an X-Forwarded-Proto field is among `headers`

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


def _per_class(func: Callable) -> Callable:
    """A copy of `func` with its own code object, for a subclass to bind as its own.

    Why: CPython 3.11 specialises each attribute access of a code object for one type
    (inline caches); a hot method shared by RequestReader and ResponseReader sees two
    types at every `self.x` and runs unspecialised. Measured with perf/instructions.py:
    sharing `feed` and `on_header` cost 1.7 % each per proxied request. One source, one
    code object per class."""
    code = func.__code__.replace()
    copy = types.FunctionType(code, func.__globals__, func.__name__, func.__defaults__)
    copy.__qualname__ = func.__qualname__
    copy.__doc__ = func.__doc__
    return copy


def _mkerr(err: type[ProxyProtocolError], msg: str, status: int = 400) -> ProxyProtocolError:
    if err is ClientProtocolError:
        return ClientProtocolError(msg, status)
    return err(msg)


class _Reader:
    """Shared part of both directions: callbacks -> events, head accounting, limits."""

    __slots__ = (
        "_cl",
        "_error",
        "_events",
        "_feed_len",
        "_fields",
        "_head",
        "_head_bytes",
        "_kept",
        "_lens",
        "_nspecial",
        "_parser",
        "_special_bytes",
        "_te",
        "_tokens",
        "_upgrade",
        "in_head",
        "in_message",
        "keep_alive",
        "stopped",
    )

    _err: type[ProxyProtocolError] = ClientProtocolError
    _INVALID = "invalid request"  # the error's text when llhttp gives none

    def __init__(self) -> None:
        self._events: list = []
        self._error: ProxyProtocolError | None = None
        self._head: Request | Response | None = None
        self._kept: list[tuple[bytes, bytes]] = []  # end-to-end fields of the head being parsed
        self._nspecial = 0  # fields handed to _special, and their bytes
        self._special_bytes = 0
        # Head size accounting without a sum per field (see _end_head): the bytes of
        # this head in earlier reads, and the length of the read being parsed.
        self._head_bytes = 0
        self._feed_len = 0
        self._cl: bytes | None = None
        self._te: list[bytes] = []
        self._tokens: list[bytes] | None = None  # Connection tokens naming fields to drop
        self._upgrade: bytes | None = None
        self.in_head = False  # between the first byte of a head and its end
        self.in_message = False  # between the first byte and the end of a message
        self.keep_alive = True  # of the last message head
        self.stopped = False  # after an upgrade / `Connection: close`: no more parsing

    def _begin_head(self) -> None:
        self.in_head = True
        self.in_message = True
        self._head_bytes = 0
        self._nspecial = 0
        self._special_bytes = 0
        if self._kept:
            self._kept = []
        self._cl = None
        self._tokens = None
        self._upgrade = None
        if self._te:
            self._te = []

    # -- httptools callbacks -------------------------------------------------------------
    # hot path: on_header runs once per field of every message on both sides (measured:
    # the callbacks, not llhttp, are most of the parse time). It sorts each field as it
    # comes: an ordinary field is one length test and one append; only names of the
    # length of one of this side's interpreted fields (`_fields`, FIELD_*) are lower-cased
    # and looked up. The limits are checked once per head (_end_head) and once per read
    # (feed), not per field: what llhttp hands us is bounded by the read anyway.
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in self._lens:
            kind = self._fields.get(name.lower())
            if kind is not None:
                if self.in_head:  # else a trailer (llhttp reports them as headers)
                    self._special(kind, name, value)
                return
        self._kept.append((name, value))  # after the head: a trailer, dropped

    def _special(self, kind: int, name: bytes, value: bytes) -> None:
        """A field the proxy interprets (framing, hop-by-hop, and per side)."""
        self._nspecial += 1
        self._special_bytes += len(name) + len(value) + 4
        if kind == FIELD_CONNECTION:
            v = value.strip().lower()
            t = _CONN_TOKENS.get(v)
            # only tokens naming a field to remove are kept (see _end_head)
            drop = (
                [x for x in _TOKEN_SPLIT.split(v) if x and x not in _NOT_DROPPED]
                if t is None
                else _CONN_DROPS[v]
            )
            if drop:
                tokens = self._tokens
                if tokens is None:
                    self._tokens = list(drop)
                else:
                    tokens.extend(drop)
        elif kind == FIELD_CONTENT_LENGTH:
            if self._cl is not None:  # llhttp refuses this already; keep the rule local
                self._fail("duplicate Content-Length")
            self._cl = value.strip()
        elif kind == FIELD_TRANSFER_ENCODING:
            self._te.extend(_TOKEN_SPLIT.split(value.strip().lower()))
        elif kind == FIELD_UPGRADE:
            self._upgrade = value
        # FIELD_HOP: another hop-by-hop field, not forwarded

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self._events.append(END)

    # -- bytes in ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> list:
        """Parse `data`; return the events. Raises the side's ProxyProtocolError
        (ClientProtocolError with the status to answer, or UpstreamProtocolError)."""
        if self.stopped:
            return []
        was_in_head = self.in_head
        self._feed_len = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._events.append(Upgraded(data[exc.args[0] :]))
            self.stopped = True
        except httptools.HttpParserError as exc:
            if self._error is not None or not self._recover(exc, data):
                self._events = []
                self.stopped = True
                if self._error is not None:  # raised by one of our callbacks
                    raise self._error from None
                raise _mkerr(self._err, str(exc) or self._INVALID) from None
        if self.in_head:
            self._check_partial(len(data), was_in_head)
        elif self._kept:  # trailer fields
            self._check_trailers()
        ev = self._events
        self._events = []
        return ev

    def _recover(self, exc: httptools.HttpParserError, data: bytes) -> bool:
        """After an llhttp error that is not ours: may parsing go on (this side's
        exceptions to "stop at the first error")? Events gathered so far are kept."""
        return False

    # -- helpers ---------------------------------------------------------------------------
    def _fail(self, msg: str, status: int = 400) -> None:
        self._error = _mkerr(self._err, msg, status)
        raise self._error

    def _line_bytes(self) -> int:
        """The first line's parts seen so far (target / reason)."""
        return 0

    def _fields_size(self) -> int:
        """The exact size of the head parsed so far (the field being parsed aside)."""
        n = self._line_bytes() + self._special_bytes
        for name, value in self._kept:
            n += len(name) + len(value) + 4
        return n

    def _check_partial(self, data_len: int, was_in_head: bool) -> None:
        """After a read that left a head incomplete: bound what httptools buffers for
        us (a head sent slowly, or too large). Raises the side's error."""
        if was_in_head:
            n = self._head_bytes + data_len  # all of this read is head
        else:
            n = data_len  # the head began in this read, maybe after a previous message
            if n > MAX_HEAD_SIZE:
                n = self._fields_size()  # exact, but for the field being parsed
        if n > MAX_HEAD_SIZE or len(self._kept) + self._nspecial > MAX_HEADERS:
            self.stopped = True
            self._events = []
            self._error = _mkerr(self._err, "head too large", 431)
            raise self._error
        self._head_bytes = n

    def _check_trailers(self) -> None:
        """Trailer fields (after a chunked body) are collected in `_kept` and dropped;
        they count against the same limits."""
        kept = self._kept
        if len(kept) > MAX_HEADERS or sum(len(a) + len(b) + 4 for a, b in kept) > MAX_HEAD_SIZE:
            self.stopped = True
            self._events = []
            self._error = _mkerr(self._err, "trailer section too large", 431)
            raise self._error

    def _end_head(self, head: Request | Response) -> list[tuple[bytes, bytes]]:
        """Framing fields of `head` from what on_header sorted; returns the end-to-end
        fields with those named by `Connection` removed (`_tokens`, lower-cased).

        First the limits of a head that ends in this read: it is no larger than its
        earlier reads plus this one, so only a read larger than the limit costs an exact
        sum."""
        if len(self._kept) + self._nspecial > MAX_HEADERS:
            self._fail("too many header fields", 431)
        if (
            self._head_bytes + self._feed_len > MAX_HEAD_SIZE
            and self._fields_size() > MAX_HEAD_SIZE
        ):
            self._fail("head too large", 431)
        te = self._te
        cl = self._cl
        if te:
            if cl is not None:
                self._fail("both Content-Length and Transfer-Encoding")
            head.chunked = te[-1] == b"chunked"
        elif cl is not None:
            if not _CL_RE.match(cl):  # never a bare int() on a framing number
                self._fail("invalid Content-Length")
            head.content_length = int(cl)
        kept = self._kept
        self._kept = []  # trailers are collected here, counted (_check_trailers), dropped
        tokens = self._tokens
        if tokens:  # the names a Connection field asks to remove (never hop-by-hop ones)
            drop = set(tokens)
            kept = [h for h in kept if h[0].lower() not in drop]
        return kept


class RequestReader(_Reader):
    """The client side: parses requests, validates them, yields events."""

    __slots__ = ("_hosts", "_url", "_xff")
    _err = ClientProtocolError
    # hot path: own copies of the shared hot methods (see _per_class)
    feed = _per_class(_Reader.feed)
    on_header = _per_class(_Reader.on_header)
    on_body = _per_class(_Reader.on_body)
    _begin_head = _per_class(_Reader._begin_head)
    _end_head = _per_class(_Reader._end_head)

    def __init__(self) -> None:
        super().__init__()
        self._url: list[bytes] = []
        self._hosts = 0
        self._xff: list[bytes] | None = None
        self._fields = _REQUEST_FIELDS
        self._lens = _REQUEST_LENS
        self._parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self._begin_head()
        self._head = Request()
        self._url = []
        self._hosts = 0
        self._xff = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)  # its size counts in _end_head / _check_partial

    def _line_bytes(self) -> int:
        return sum(map(len, self._url))

    def _special(self, kind: int, name: bytes, value: bytes) -> None:
        if kind < FIELD_HOST:
            _Reader._special(self, kind, name, value)
            return
        req: Request = self._head  # type: ignore[assignment]
        if kind == FIELD_HOST:
            self._hosts += 1
            req.host = value
            self._kept.append((name, value))
        elif kind == FIELD_XFF:  # joined into one, sent after ours (serialize_request_head)
            self._nspecial += 1
            self._special_bytes += len(name) + len(value) + 4
            xff = self._xff
            if xff is None:
                self._xff = [value]
            else:
                xff.append(value)
        elif kind == FIELD_EXPECT:
            if value.strip().lower() == b"100-continue":
                req.expect_continue = True
            self._kept.append((name, value))
        else:  # FIELD_XFP: replaced by ours with `forwardfor`
            req.xfp = True
            self._kept.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        req: Request = self._head  # type: ignore[assignment]
        self._head = None  # the exchange holds it; an idle connection need not
        p = self._parser
        req.method = p.get_method()
        url = self._url
        req.target = url[0] if len(url) == 1 else b"".join(url)
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
        req.headers = self._end_head(req)  # (its size check counts the target too)
        self._url = _NO_URL
        te = self._te
        if te:
            if req.version == b"1.0":
                self._fail("Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 §6.1
            if te != [b"chunked"]:
                # llhttp refuses a request whose last coding is not chunked; we also refuse
                # any other coding before it: the servers behind us would not all agree.
                self._fail("unsupported Transfer-Encoding", 501)
        hosts = self._hosts
        if hosts > 1:
            self._fail("more than one Host header")
        if hosts == 0 and req.version == b"1.1":
            self._fail("missing Host header")
        xff = self._xff
        dropped = self._tokens  # `Connection: x-forwarded-for` etc.
        if dropped:
            if b"x-forwarded-for" in dropped:
                xff = None
            if b"expect" in dropped:
                req.expect_continue = False
            if b"x-forwarded-proto" in dropped:
                req.xfp = False
        self._xff = None
        if xff:
            req.xff = b", ".join(xff)
        if self._upgrade is not None and p.should_upgrade():
            req.upgrade = self._upgrade
        self._events.append(req)

    def on_message_complete(self) -> None:
        self.in_message = False
        self._events.append(END)
        if not self.keep_alive:
            self.stopped = True

    def _recover(self, exc: httptools.HttpParserError, data: bytes) -> bool:
        # llhttp refuses bytes after a `Connection: close` request; the request itself
        # is fine and is answered, what follows is ignored.
        return self.stopped and not self.in_message

    def resume(self, data: bytes) -> list:
        """Continue parsing after an Upgrade request the server declined."""
        self.stopped = False
        return self.feed(data) if data else []


class ResponseReader(_Reader):
    """The server side: parses responses to the requests we sent, one at a time."""

    __slots__ = ("_head_only", "eof_body", "head_clean")
    _err = UpstreamProtocolError
    # hot path: own copies of the shared hot methods (see _per_class)
    feed = _per_class(_Reader.feed)
    on_header = _per_class(_Reader.on_header)
    on_body = _per_class(_Reader.on_body)
    on_message_complete = _per_class(_Reader.on_message_complete)
    _begin_head = _per_class(_Reader._begin_head)
    _end_head = _per_class(_Reader._end_head)
    _special = _per_class(_Reader._special)
    _INVALID = "invalid response"

    def __init__(self) -> None:
        super().__init__()
        self._fields = _HOP_FIELDS
        self._lens = _HOP_LENS
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self.eof_body = False  # the body of the current response ends at EOF
        self.head_clean = True  # a HEAD response ended exactly at the end of a read

    def expect(self, head_request: bool) -> None:
        """Tell the parser what the next response answers (HEAD responses have no body)."""
        self._head_only = head_request
        self.head_clean = True

    def on_message_begin(self) -> None:
        self._begin_head()
        self._head = Response()
        self.eof_body = False

    def on_status(self, reason: bytes) -> None:
        self._head.reason += reason  # type: ignore[union-attr]

    def _line_bytes(self) -> int:
        head = self._head
        return 0 if head is None else len(head.reason)

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
        resp.headers = self._end_head(resp)
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

    def _recover(self, exc: httptools.HttpParserError, data: bytes) -> bool:
        if not isinstance(exc.__context__, _Stop):
            return False
        # The head of a HEAD response is complete (on_headers_complete stopped llhttp):
        # a fresh parser for the next response.
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        # Nothing may follow a HEAD response; if something did, the connection's framing
        # is unknown from here on and it must not be reused.
        self.head_clean = data.endswith(b"\r\n\r\n")
        if not self.head_clean:
            self.keep_alive = False
            self.stopped = True
        return True

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
        if req.xfp:  # replaced by ours
            for name, value in req.headers:
                if name.lower() != b"x-forwarded-proto":
                    parts += (name, b": ", value, _CRLF)
        else:
            for name, value in req.headers:
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

    def __repr__(self) -> str:
        return f"ResponseFraming(chunk={self.chunk}, keep_alive={self.keep_alive})"


# The four framings, shared (never mutated): no object per response on the hot path.
_FRAMINGS = {(c, k): ResponseFraming(c, k) for c in (False, True) for k in (False, True)}


def response_framing(
    req: Request, resp: Response, eof_body: bool, closing: bool
) -> ResponseFraming:
    """Decide the client-side framing of `resp` to `req` (a shared instance).

    `closing`: the proxy wants to close the client connection after this response
    (shutdown, request body not fully read, declined upgrade ...).
    """
    keep_alive = bool(req.keep_alive and not closing)
    st = resp.status
    if st < 200 or st in NO_BODY_STATUS or req.method == b"HEAD":
        return _FRAMINGS[False, keep_alive]
    if resp.chunked or eof_body:
        if req.version == b"1.1":
            return _FRAMINGS[True, keep_alive]
        return _FRAMINGS[False, False]  # HTTP/1.0 client: the close delimits the body
    return _FRAMINGS[False, keep_alive]


def serialize_response_head(req: Request, resp: Response, framing: ResponseFraming) -> bytes:
    """The head we send to the client (one transport.write per response head)."""
    parts = [STATUS_LINES.get(resp.status) or status_line(resp.status, resp.reason)]
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
