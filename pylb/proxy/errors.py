"""Protocol errors of the HTTP proxy, named by whose fault they are (h11's habit).

The frontend maps the exception type to what it answers: a `ClientProtocolError` is the
client's fault and is answered with its `status_hint` (400, 431, 501, ...) before the
client connection is closed; an `UpstreamProtocolError` is the server's fault and becomes
a 502 for the client (HAProxy's answer to an invalid or truncated response).
"""

from __future__ import annotations


class ProxyProtocolError(Exception):
    """Base class: a peer broke HTTP/1.x framing or the proxy's limits."""


class ClientProtocolError(ProxyProtocolError):
    """The client sent something we refuse; answered with `status_hint` and a close."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class UpstreamProtocolError(ProxyProtocolError):
    """The server sent an invalid or truncated response; the client gets a 502."""

    status_hint = 502
