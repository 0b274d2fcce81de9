"""The sans-IO HTTP/1.x layer: events from bytes, validation, smuggling, serialisation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylb.proxy.errors import ClientProtocolError, UpstreamProtocolError
from pylb.proxy.h1 import (
    END,
    MAX_HEADERS,
    STATUS_LINES,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    Upgraded,
    response_framing,
    serialize_request_head,
    serialize_response_head,
)


def feed_all(reader, data: bytes, *, bytewise: bool = False) -> list:
    out: list = []
    if bytewise:
        for i in range(len(data)):
            out += reader.feed(data[i : i + 1])
    else:
        out += reader.feed(data)
    return out


def merge(events: list) -> list:
    """Join adjacent body pieces (byte-wise feeding splits them)."""
    out: list = []
    for ev in events:
        if type(ev) is bytes and out and type(out[-1]) is bytes:
            out[-1] += ev
        else:
            out.append(ev)
    return out


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request) -> bool:
    return request.param


def test_simple_get(bytewise) -> None:
    ev = feed_all(
        RequestReader(), b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", bytewise=bytewise
    )
    assert len(ev) == 2 and ev[1] is END
    req = ev[0]
    assert isinstance(req, Request)
    assert (req.method, req.target, req.version) == (b"GET", b"/a?b=1", b"1.1")
    assert req.headers == [(b"Host", b"x"), (b"Accept", b"*/*")]
    assert req.keep_alive and not req.has_body and req.replayable
    assert req.request_line() == "GET /a?b=1 HTTP/1.1"


def test_content_length_body_and_pipelining(bytewise) -> None:
    data = (
        b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    ev = merge(feed_all(RequestReader(), data, bytewise=bytewise))
    assert [type(e).__name__ for e in ev] == ["Request", "bytes", "_End", "Request", "_End"]
    assert ev[0].content_length == 5 and ev[1] == b"hello" and not ev[0].replayable
    assert ev[3].target == b"/2"


def test_chunked_body_dechunked(bytewise) -> None:
    data = (
        b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    ev = merge(feed_all(RequestReader(), data, bytewise=bytewise))
    assert ev[0].chunked and ev[0].content_length is None
    assert ev[1] == b"abcde" and ev[2] is END


def test_http10_keepalive_flags() -> None:
    (req, _) = RequestReader().feed(b"GET / HTTP/1.0\r\n\r\n")
    assert req.version == b"1.0" and not req.keep_alive
    (req, _) = RequestReader().feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert req.keep_alive
    (req, _) = RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not req.keep_alive


def test_data_after_close_is_ignored() -> None:
    r = RequestReader()
    ev = r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n")
    assert len(ev) == 2 and r.stopped
    assert r.feed(b"more garbage") == []


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # request smuggling classics
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa5\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: y\n\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        # Host rules (llhttp does not enforce them)
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        # limits
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 40000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
        # methods / versions
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS on the plain port
    ],
)
def test_rejected_requests(data: bytes, status: int, bytewise) -> None:
    r = RequestReader()
    with pytest.raises(ClientProtocolError) as ei:
        feed_all(r, data, bytewise=bytewise)
    assert ei.value.status_hint == status
    assert r.stopped


def test_unbounded_head_is_cut_while_incomplete() -> None:
    r = RequestReader()
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    with pytest.raises(ClientProtocolError) as ei:
        for _ in range(100):
            r.feed(b"y" * 4096)  # never ends the header: httptools would buffer it all
    assert ei.value.status_hint == 431


def test_upgrade_request_stops_parser_and_can_resume() -> None:
    r = RequestReader()
    data = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    ev = r.feed(data + b"FRAME")
    assert ev[0].upgrade == b"websocket" and ev[1] is END
    assert isinstance(ev[2], Upgraded) and ev[2].rest == b"FRAME"
    assert r.feed(b"more") == []
    # declined: what followed is HTTP again
    r = RequestReader()
    ev = r.feed(data + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    ev2 = r.resume(ev[2].rest)
    assert ev2[0].target == b"/next"


def test_upgrade_without_connection_token_is_not_an_upgrade() -> None:
    (req, end) = RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert req.upgrade is None and end is END


def test_hop_by_hop_and_connection_named_headers_removed() -> None:
    (req, _) = RequestReader().feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Priv, host\r\nX-Priv: 1\r\n"
        b"Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: y\r\nUpgrade: z\r\n"
        b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Ok: 1\r\n\r\n"
    )
    assert req.headers == [(b"Host", b"a"), (b"X-Ok", b"1")]
    assert req.xff == b"1.1.1.1, 2.2.2.2"


def test_serialize_request_head_rebuilds_framing() -> None:
    (req, *_rest) = RequestReader().feed(
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 9.9.9.9\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
    )
    head = serialize_request_head(req, b"10.0.0.7", forwardfor=True)
    assert head == (
        b"POST /p HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 9.9.9.9, 10.0.0.7\r\n"
        b"X-Forwarded-Proto: http\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    (req, *_rest) = RequestReader().feed(b"POST /p HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert serialize_request_head(req, None, forwardfor=False) == (
        b"POST /p HTTP/1.0\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    )


def test_expect_continue_flag() -> None:
    (req,) = RequestReader().feed(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 9\r\n\r\n"
    )
    assert req.expect_continue and (b"Expect", b"100-Continue") in req.headers


# -- responses -----------------------------------------------------------------------------------


def test_response_content_length_and_keepalive(bytewise) -> None:
    r = ResponseReader()
    r.expect(False)
    ev = merge(
        feed_all(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nok", bytewise=bytewise)
    )
    assert ev[0].status == 200 and ev[0].reason == b"OK" and ev[0].content_length == 2
    assert ev[0].headers == [(b"X", b"y")]
    assert ev[1:] == [b"ok", END] and r.keep_alive


def test_response_interim_then_final(bytewise) -> None:
    r = ResponseReader()
    r.expect(False)
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    ev = merge(feed_all(r, data, bytewise=bytewise))
    assert [getattr(e, "status", e) for e in ev] == [100, END, 103, END, 201, b"ok", END]
    assert ev[4].chunked


def test_response_to_head_has_no_body() -> None:
    r = ResponseReader()
    r.expect(True)
    ev = r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert [type(e).__name__ for e in ev] == ["Response", "_End"]
    assert ev[0].content_length == 1000 and r.keep_alive and r.head_clean
    r.expect(False)  # the next response on the same connection parses normally
    ev = r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert ev[1:] == [b"x", END]
    # a server that sends a body to HEAD anyway: the connection must not be reused
    r = ResponseReader()
    r.expect(True)
    ev = r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert ev[1] is END and not r.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_204_304_have_no_body(status: int) -> None:
    r = ResponseReader()
    r.expect(False)
    ev = r.feed(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status)
    assert [type(e).__name__ for e in ev] == ["Response", "_End"]


def test_close_delimited_response() -> None:
    r = ResponseReader()
    r.expect(False)
    ev = r.feed(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert ev[1] == b"abc" and r.eof_body and not r.keep_alive
    assert r.feed_eof() == [END]


def test_truncated_response_is_an_error() -> None:
    r = ResponseReader()
    r.expect(False)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(UpstreamProtocolError):
        r.feed_eof()
    assert ResponseReader().feed_eof() == []  # closed between responses: not an error here


def test_101_switches() -> None:
    r = ResponseReader()
    r.expect(False)
    ev = r.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x81\x00"
    )
    assert ev[0].status == 101 and ev[0].upgrade == b"websocket" and ev[1] is END
    assert ev[2].rest == b"\x81\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 40000 + b"\r\n\r\n",
    ],
)
def test_bad_responses(data: bytes) -> None:
    r = ResponseReader()
    r.expect(False)
    with pytest.raises(UpstreamProtocolError):
        r.feed(data)


def test_response_framing_and_head() -> None:
    (req11, _) = RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    (req10, _) = RequestReader().feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    resp = Response()
    resp.status = 200
    resp.chunked = True
    resp.headers = [(b"X", b"1")]
    f = response_framing(req11, resp, eof_body=False, closing=False)
    assert f.chunk and f.keep_alive
    assert serialize_response_head(req11, resp, f) == (
        b"HTTP/1.1 200 OK\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    f = response_framing(req10, resp, eof_body=False, closing=False)
    assert not f.chunk and not f.keep_alive  # a 1.0 client: close-delimited
    resp.chunked = False
    resp.content_length = 4
    f = response_framing(req10, resp, eof_body=False, closing=False)
    assert serialize_response_head(req10, resp, f) == (
        b"HTTP/1.1 200 OK\r\nX: 1\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\n"
    )
    f = response_framing(req11, resp, eof_body=False, closing=True)
    assert serialize_response_head(req11, resp, f).endswith(b"Connection: close\r\n\r\n")


def test_status_lines_precomputed() -> None:
    assert STATUS_LINES[200] == b"HTTP/1.1 200 OK\r\n"
    assert STATUS_LINES[503] == b"HTTP/1.1 503 Service Unavailable\r\n"


# -- fuzz: arbitrary bytes either parse or raise the protocol error, nothing else -----------------


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_request_reader_never_raises_anything_else(chunks: list[bytes]) -> None:
    r = RequestReader()
    try:
        for c in chunks:
            for ev in r.feed(c):
                assert type(ev) in (Request, bytes, Upgraded) or ev is END
    except ClientProtocolError:
        pass


_PREFIXES = [
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n",
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_PREFIXES), st.binary(max_size=200))
def test_request_reader_fuzz_after_valid_prefix(prefix: bytes, tail: bytes) -> None:
    r = RequestReader()
    try:
        r.feed(prefix)
        r.feed(tail)
    except ClientProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.lists(st.binary(max_size=64), max_size=8))
def test_response_reader_never_raises_anything_else(head: bool, chunks: list[bytes]) -> None:
    r = ResponseReader()
    r.expect(head)
    try:
        for c in [b"HTTP/1.1 200 OK\r\n", *chunks]:
            r.feed(c)
        r.feed_eof()
    except UpstreamProtocolError:
        pass
