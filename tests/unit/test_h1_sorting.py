"""The single-pass field sorting of pylb/proxy/h1.py (issue 7, second round): fields are
sorted as llhttp reports them, and the limits are checked once per head and once per read
instead of once per field. These tests pin the limits' edges that the per-read checks
must still see, and the request-side fields the sorting now fills."""

from __future__ import annotations

import pytest

from pylb.proxy.errors import ClientProtocolError, UpstreamProtocolError
from pylb.proxy.h1 import (
    END,
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    response_framing,
    serialize_request_head,
)


def test_a_large_read_ending_in_a_small_head_is_not_refused() -> None:
    # One read: a 40 KB body, then a pipelined GET. The read is larger than the head limit;
    # the head in it is not: the exact size is computed, no false 431.
    body = b"x" * 40000
    data = (
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    ev = RequestReader().feed(data)
    reqs = [e for e in ev if type(e) is Request]
    assert [r.target for r in reqs] == [b"/a", b"/b"]
    assert ev[-1] is END


def test_a_read_ending_in_a_large_partial_head_after_a_body_is_measured_exactly() -> None:
    r = RequestReader()
    body = b"x" * 40000
    ev = r.feed(
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /b HTTP/1.1\r\nHost: a\r\nX-A: "
    )
    assert ev[-1] is END  # the first request is whole; the second head is pending
    ev = r.feed(b"1\r\n\r\n")
    assert ev[0].target == b"/b"


def test_a_head_over_the_limit_across_two_reads_is_refused() -> None:
    r = RequestReader()
    half = MAX_HEAD_SIZE // 2 + 100
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * half + b"\r\n")
    with pytest.raises(ClientProtocolError) as ei:
        r.feed(b"X-B: " + b"b" * half + b"\r\n\r\n")
    assert ei.value.status_hint == 431
    assert r.stopped


@pytest.mark.parametrize("name", [b"Connection", b"Content-Length", b"Upgrade", b"X-Forwarded-For"])
def test_a_huge_special_field_in_one_read_counts(name: bytes) -> None:
    # Fields the reader interprets are not kept in the field list; their size still counts.
    value = b"7" * (MAX_HEAD_SIZE + 10)
    with pytest.raises(ClientProtocolError) as ei:
        RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": " + value + b"\r\n\r\n")
    assert ei.value.status_hint in (400, 431)  # a huge Content-Length is invalid anyway


def test_too_many_special_fields_count_too() -> None:
    many = b"Keep-Alive: 1\r\n" * (MAX_HEADERS + 1)
    with pytest.raises(ClientProtocolError) as ei:
        RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    assert ei.value.status_hint == 431


def _chunked_request_with_trailers(n: int) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        + b"X-T: 1\r\n" * n
        + b"\r\n"
    )


def test_trailers_within_the_limit_are_dropped() -> None:
    ev = RequestReader().feed(_chunked_request_with_trailers(3))
    assert ev[0].headers == [(b"Host", b"a")]
    assert ev[1:] == [b"abc", END]


def test_too_many_trailer_fields_are_refused() -> None:
    r = RequestReader()
    with pytest.raises(ClientProtocolError) as ei:
        r.feed(_chunked_request_with_trailers(MAX_HEADERS + 1))
    assert ei.value.status_hint == 431


def test_too_many_response_fields_are_refused() -> None:
    r = ResponseReader()
    r.expect(False)
    with pytest.raises(UpstreamProtocolError):
        fields = b"X: y\r\n" * (MAX_HEADERS + 1)
        r.feed(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")


def test_response_fields_sorted_in_one_pass() -> None:
    r = ResponseReader()
    r.expect(False)
    ev = r.feed(
        b"HTTP/1.1 200 OK\r\nServer: s\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n"
        b"Connection: Keep-Alive\r\nX-Openstack-Request-Id: req-1\r\n\r\nok"
    )
    resp = ev[0]
    assert type(resp) is Response
    assert resp.headers == [(b"Server", b"s"), (b"X-Openstack-Request-Id", b"req-1")]
    assert resp.content_length == 2
    assert resp.keep_alive
    assert ev[1:] == [b"ok", END]


def test_x_forwarded_proto_is_replaced_only_with_forwardfor() -> None:
    req = RequestReader().feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nX-A: 1\r\n\r\n"
    )[0]
    assert req.xfp
    with_ff = serialize_request_head(req, b"192.0.2.1", True)
    assert b"X-Forwarded-Proto: https" not in with_ff
    assert with_ff.count(b"X-Forwarded-Proto: http\r\n") == 1
    assert b"X-A: 1\r\n" in with_ff
    without = serialize_request_head(req, b"192.0.2.1", False)
    assert b"X-Forwarded-Proto: https\r\n" in without


def test_connection_may_name_x_forwarded_for_and_expect() -> None:
    req = RequestReader().feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7\r\nExpect: 100-continue\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"Connection: x-forwarded-for, expect, x-forwarded-proto\r\n\r\n"
    )[0]
    assert req.xff is None
    assert not req.expect_continue
    assert not req.xfp
    assert req.headers == [(b"Host", b"a")]


def test_framings_are_shared_and_right() -> None:
    req = RequestReader().feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")[0]
    resp = Response()
    resp.status = 200
    resp.content_length = 1
    a = response_framing(req, resp, False, False)
    b = response_framing(req, resp, False, False)
    assert a is b
    assert (a.chunk, a.keep_alive) == (False, True)
    c = response_framing(req, resp, False, True)
    assert (c.chunk, c.keep_alive) == (False, False)
    resp.chunked = True
    d = response_framing(req, resp, False, False)
    assert (d.chunk, d.keep_alive) == (True, True)
