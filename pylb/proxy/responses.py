"""Canned error responses, byte for byte like HAProxy's (src/http_htx.c http_err_msgs):
a short HTML body, `Cache-Control: no-cache`, `Connection: close`. Built once at import.
"""

from __future__ import annotations

from pylb.proxy.h1 import status_line

_MESSAGES: dict[int, str] = {
    400: "Your browser sent an invalid request.",
    403: "Request forbidden by administrative rules.",
    408: "Your browser didn't send a complete request in time.",
    413: "The request entity is too large.",
    431: "The request header fields are too large.",
    500: "An internal server error occurred.",
    501: "The server does not support the functionality required to fulfill the request.",
    502: "The server returned an invalid or incomplete response.",
    503: "No server is available to handle this request.",
    504: "The server didn't respond in time.",
    505: "The HTTP version of the request is not supported.",
}


def _build(status: int, message: str) -> bytes:
    line = status_line(status)
    title = line[9:-2].decode("latin-1")  # "503 Service Unavailable"
    body = f"<html><body><h1>{title}</h1>\n{message}\n</body></html>\n".encode("latin-1")
    return (
        line
        + b"Content-Length: %d\r\n" % len(body)
        + b"Cache-Control: no-cache\r\n"
        + b"Content-Type: text/html\r\n"
        + b"Connection: close\r\n\r\n"
        + body
    )


CANNED: dict[int, bytes] = {st: _build(st, msg) for st, msg in _MESSAGES.items()}


def canned(status: int) -> bytes:
    """The full response for `status` (unknown codes fall back to 400/500/502 families)."""
    resp = CANNED.get(status)
    if resp is None:
        resp = CANNED[400 if status < 500 else 500]
    return resp


def canned_head_only(status: int) -> bytes:
    """The same response without its body, for a HEAD request."""
    full = canned(status)
    return full[: full.index(b"\r\n\r\n") + 4]
