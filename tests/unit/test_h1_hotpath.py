"""The hot-path shortcuts of pylb/proxy/h1.py (issue 7) keep the rules of the slow path:
the precomputed Connection tokens, the single lower-casing of names, trailers dropped,
no per-message state kept by an idle reader."""

from __future__ import annotations

import pytest

from pylb.proxy.h1 import END, Request, RequestReader, Response, ResponseReader


def _req(head: bytes) -> Request:
    ev = RequestReader().feed(head)
    assert type(ev[0]) is Request
    return ev[0]


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b" close ", b"CLOSE"])
def test_common_connection_values_drop_nothing_else(value: bytes) -> None:
    req = _req(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + value + b"\r\nX-A: 1\r\n\r\n")
    assert req.headers == [(b"Host", b"a"), (b"X-A", b"1")]


def test_connection_tokens_still_remove_named_headers() -> None:
    req = _req(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Secret: s\r\nConnection: close, x-secret\r\n"
        b"X-Kept: k\r\nConnection: host\r\n\r\n"
    )
    # x-secret is named by a Connection token; host is protected
    assert req.headers == [(b"Host", b"a"), (b"X-Kept", b"k")]


def test_close_token_removes_a_header_named_close() -> None:
    req = _req(b"GET / HTTP/1.1\r\nHost: a\r\nClose: x\r\nConnection: close\r\n\r\n")
    assert req.headers == [(b"Host", b"a")]


def test_request_fields_after_the_fast_path() -> None:
    req = _req(
        b"GET /p?q=1 HTTP/1.1\r\nHOST: a\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b"x-forwarded-for: 2.2.2.2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert req.target == b"/p?q=1"
    assert req.host == b"a"
    assert req.xff == b"1.1.1.1, 2.2.2.2"
    assert req.expect_continue
    assert req.headers == [(b"HOST", b"a"), (b"Expect", b"100-continue")]


def test_target_in_pieces_is_joined() -> None:
    r = RequestReader()
    assert r.feed(b"GET /abc") == []
    ev = r.feed(b"def HTTP/1.1\r\nHost: a\r\n\r\n")
    assert ev[0].target == b"/abcdef"


def test_request_trailers_are_dropped_not_forwarded() -> None:
    r = RequestReader()
    ev = r.feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    req = ev[0]
    assert req.chunked
    assert req.headers == [(b"Host", b"a")]
    assert ev[1:] == [b"abc", END]


def test_response_trailers_are_dropped_not_forwarded() -> None:
    r = ResponseReader()
    r.expect(False)
    ev = r.feed(
        b"HTTP/1.1 200 OK\r\nServer: s\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    resp = ev[0]
    assert type(resp) is Response
    assert resp.headers == [(b"Server", b"s")]
    assert ev[1:] == [b"ok", END]


def test_idle_reader_keeps_no_request() -> None:
    r = RequestReader()
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r._head is None  # the exchange holds the request, the idle connection does not
    ev = r.feed(b"GET /2 HTTP/1.1\r\nHost: b\r\n\r\n")
    assert ev[0].target == b"/2" and ev[0].host == b"b"


def test_header_limits_still_hold() -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    with pytest.raises(Exception) as e:
        RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    assert getattr(e.value, "status_hint", None) == 431


@pytest.mark.parametrize("name", ["feed", "on_header", "on_body", "_begin_head", "_end_head"])
def test_hot_methods_have_a_code_object_per_side(name: str) -> None:
    # CPython 3.11 specialises attribute accesses per code object for one type: a hot
    # method shared by both readers would run unspecialised (pylb.proxy.h1._per_class).
    req = getattr(RequestReader, name).__code__
    resp = getattr(ResponseReader, name).__code__
    assert req is not resp
    assert req.co_code == resp.co_code  # one source
