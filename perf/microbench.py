#!/usr/bin/env python3
"""Per-request building blocks of the HTTP data plane, timed in isolation (no sockets).

    .venv/bin/python perf/microbench.py [-n 200000]
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python perf/microbench.py --case "ResponseReader.feed (nginx 200)" --loops N

What docs/performance.md's CPU breakdown quotes: how much of a request's user time is
llhttp itself, how much our parser callbacks, head serialisation, one Exchange object and
one clock read cost on this machine. Numbers are per call, best of 3 runs.

`--case NAME --loops N` runs one case N times and times nothing: under callgrind, the
difference of the instruction totals of two N (say 1000 and 11000) divided by their
difference is the case's instructions per call, a figure that does not move with the
machine's load (docs/performance.md quotes them).
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit

import httptools

from pylb.proxy.h1 import (
    RequestReader,
    ResponseReader,
    response_framing,
    serialize_request_head,
    serialize_response_head,
)

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
# What an OpenStack client sends (keystoneauth1 over python-requests): more fields, a body.
OPENSTACK_REQUEST = (
    b"POST /v3/auth/tokens HTTP/1.1\r\nHost: keystone.example:5000\r\n"
    b"User-Agent: keystoneauth1/5.1.2 python-requests/2.31.0 CPython/3.11.2\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept: application/json\r\nConnection: keep-alive\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Auth-Token: gAAAAABk1234567890abcdefghijklmnopqrstuvwxyz\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)
RESPONSE = (  # what nginx answers to /small
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 13:09:46 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
    b"hello from nginx\n"
)


class _Bare:
    """llhttp with the fewest Python callbacks that still see every header: the floor."""

    def __init__(self) -> None:
        self.h: list = []

    def on_message_begin(self) -> None:
        self.h = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.h.append((name, value))

    def on_message_complete(self) -> None:
        pass


def cases() -> dict:
    from pylb.proxy.exchange import Exchange

    rr = RequestReader()
    sr = ResponseReader()
    req = rr.feed(REQUEST)[0]
    sr.expect(False)
    resp = sr.feed(RESPONSE)[0]
    bare_req = httptools.HttpRequestParser(_Bare())
    bare_resp = httptools.HttpResponseParser(_Bare())

    def parse_response() -> None:
        sr.expect(False)
        sr.feed(RESPONSE)

    class _Fe:
        pass

    fe = _Fe()
    return {
        "llhttp request, bare callbacks": lambda: bare_req.feed_data(REQUEST),
        "llhttp response, bare callbacks": lambda: bare_resp.feed_data(RESPONSE),
        "RequestReader.feed (wrk GET)": lambda: rr.feed(REQUEST),
        "RequestReader.feed (keystone POST)": lambda: rr.feed(OPENSTACK_REQUEST),
        "ResponseReader.feed (nginx 200)": parse_response,
        "serialize_request_head": lambda: serialize_request_head(req, b"127.0.0.1", False),
        "response_framing + serialize_response_head": lambda: serialize_response_head(
            req, resp, response_framing(req, resp, False, False)
        ),
        "Exchange() object": lambda: Exchange(fe, req, 0.0, 0.0),  # type: ignore[arg-type]
        "time.monotonic() (= loop.time())": time.monotonic,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--case", help="run only this case, --loops times, untimed (callgrind)")
    ap.add_argument("--loops", type=int, default=10_000)
    ns = ap.parse_args(argv)
    all_cases = cases()
    if ns.case is not None:
        if ns.case not in all_cases:
            ap.error(f"unknown case {ns.case!r}; one of: {', '.join(all_cases)}")
        fn = all_cases[ns.case]
        for _ in range(ns.loops):
            fn()
        return 0
    for name, fn in all_cases.items():
        best = min(timeit.repeat(fn, number=ns.n, repeat=3)) / ns.n * 1e6
        print(f"{best:7.2f} us  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
