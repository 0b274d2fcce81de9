"""Access log lines in HAProxy's httplog and tcplog formats (and a JSON variant).

The data plane builds a record only when `AccessLog.enabled` is true, so a proxy with
`log: {target: none}` does no formatting work per request.

INTERFACE (fixed; implementation to be completed): the data plane fills one of the records
below at the end of a session/request and calls `AccessLog.http(rec)` / `AccessLog.tcp(rec)`.
Timers are integer milliseconds, -1 when the step did not happen (HAProxy convention).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class HttpLogRecord:
    client_ip: str
    client_port: int
    accept_time: float  # wall clock (time.time()) when the request's first byte arrived
    frontend: str
    backend: str
    server: str  # "<NOSRV>" when none was chosen
    t_request: int  # TR: time to receive the full request head
    t_queue: int  # Tw: time waiting in queues
    t_connect: int  # Tc: time to connect to the server
    t_response: int  # Tr: server response time (head received)
    t_active: int  # Ta: total active time of the request
    status: int  # -1 if no response
    bytes_read: int  # bytes sent to the client (head + body)
    term: str  # 4 chars: termination cause, session state, persistence, cookie ("----", "SC--", "CD--")
    actconn: int
    feconn: int
    beconn: int
    srv_conn: int
    retries: int  # prefixed with "+" when redispatched
    redispatched: bool
    srv_queue: int
    backend_queue: int
    request_line: str  # "GET /path HTTP/1.1" (or "<BADREQ>")


@dataclass(slots=True)
class TcpLogRecord:
    client_ip: str
    client_port: int
    accept_time: float
    frontend: str
    backend: str
    server: str
    t_queue: int  # Tw
    t_connect: int  # Tc
    t_total: int  # Tt
    bytes_read: int  # bytes sent to the client
    term: str  # 2 chars: "--", "CD", "SD", "cD", "sD", "SC"
    actconn: int
    feconn: int
    beconn: int
    srv_conn: int
    retries: int
    redispatched: bool
    srv_queue: int
    backend_queue: int


class AccessLog:
    """Formats and writes access log lines to the configured target."""

    enabled: bool = False

    def http(self, rec: HttpLogRecord) -> None:
        raise NotImplementedError

    def tcp(self, rec: TcpLogRecord) -> None:
        raise NotImplementedError
