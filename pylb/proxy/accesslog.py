"""Access log lines in HAProxy's httplog and tcplog formats (and a JSON variant).

The data plane builds a record only when `AccessLog.enabled` is true, so a proxy with
`log: {target: none}` does no formatting work per request.

INTERFACE (fixed): the data plane fills one of the records below at the end of a
session/request and calls `AccessLog.http(rec)` / `AccessLog.tcp(rec)`. Timers are integer
milliseconds, -1 when the step did not happen (HAProxy convention).

Formats (HAProxy 2.x `option httplog` / `option tcplog`, so existing log parsers, grok
patterns and dashboards keep working):

    httplog  %ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc
             %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r
    tcplog   %ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq
    json     one object per line, the same fields under HAProxy's field names

Captured headers (`%hr %hs`) are omitted because pylb captures none, exactly as HAProxy
omits them when no `capture` is configured. Dates are local time, as HAProxy logs them.

Writing never waits on a slow reader for long: stdout and files are written in batches
(at most every `FLUSH_INTERVAL` seconds or `FLUSH_BYTES` of text, one write call each);
syslog uses a non-blocking datagram socket and drops (and counts) a line the receiver has
no room for, as HAProxy does, rather than stall the data plane.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import IO

from pylb.config.model import Config, LogConf


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
    # 4 chars: termination cause, session state, persistence, cookie ("----", "SC--", "CD--")
    term: str
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


# --------------------------------------------------------------------------- formatting

# English month names whatever the locale (strftime("%b") follows LC_TIME; HAProxy doesn't).
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@functools.lru_cache(maxsize=4)  # a busy proxy logs many lines per second: format each once
def _date_to_second(sec: int) -> str:
    t = time.localtime(sec)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


def accept_date(ts: float) -> str:
    """HAProxy's accept date, local time with milliseconds: 06/Feb/2009:12:14:14.655."""
    # Via integer microseconds: float(...655) is ...654999..., and HAProxy truncates usec.
    sec, usec = divmod(round(ts * 1_000_000), 1_000_000)
    return f"{_date_to_second(sec)}.{usec // 1000:03d}"


def clear_date_cache() -> None:
    """Forget cached dates (after a time zone change; tests)."""
    _date_to_second.cache_clear()
    _rfc3164_stamp.cache_clear()


def _retries(retries: int, redispatched: bool) -> str:
    return f"+{retries}" if redispatched else str(retries)


def _escape(text: str) -> str:
    """Keep one record on one line and the quotes balanced: control characters, non-ASCII,
    '"' and '#' become #XX (per UTF-8 byte), as HAProxy encodes logged request lines."""
    if text.isascii() and text.isprintable() and '"' not in text and "#" not in text:
        return text  # hot path: a normal request line
    out = []
    for ch in text:
        if " " <= ch <= "~" and ch not in '"#':
            out.append(ch)
        else:
            out.extend(f"#{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def format_httplog(rec: HttpLogRecord, fe_name: str | None = None) -> str:
    """One httplog line (no trailing newline). `fe_name` overrides `rec.frontend`."""
    return (
        f"{rec.client_ip}:{rec.client_port} [{accept_date(rec.accept_time)}] "
        f"{fe_name or rec.frontend} {rec.backend}/{rec.server} "
        f"{rec.t_request}/{rec.t_queue}/{rec.t_connect}/{rec.t_response}/{rec.t_active} "
        f"{rec.status} {rec.bytes_read} - - {rec.term} "
        f"{rec.actconn}/{rec.feconn}/{rec.beconn}/{rec.srv_conn}/"
        f"{_retries(rec.retries, rec.redispatched)} "
        f'{rec.srv_queue}/{rec.backend_queue} "{_escape(rec.request_line)}"'
    )


def format_tcplog(rec: TcpLogRecord | HttpLogRecord, fe_name: str | None = None) -> str:
    """One tcplog line. An HTTP record (a `tcplog` HTTP listener) logs Ta as Tt and the
    first two termination characters, which is what a TCP-level view of it shows."""
    if isinstance(rec, HttpLogRecord):
        t_total, term = rec.t_active, rec.term[:2]
    else:
        t_total, term = rec.t_total, rec.term
    return (
        f"{rec.client_ip}:{rec.client_port} [{accept_date(rec.accept_time)}] "
        f"{fe_name or rec.frontend} {rec.backend}/{rec.server} "
        f"{rec.t_queue}/{rec.t_connect}/{t_total} {rec.bytes_read} {term} "
        f"{rec.actconn}/{rec.feconn}/{rec.beconn}/{rec.srv_conn}/"
        f"{_retries(rec.retries, rec.redispatched)} {rec.srv_queue}/{rec.backend_queue}"
    )


def format_json(rec: HttpLogRecord | TcpLogRecord, fe_name: str | None = None) -> str:
    """One JSON object per line, keys named as in HAProxy's log field documentation."""
    d: dict[str, object] = {
        "timestamp": round(rec.accept_time, 3),
        "client_ip": rec.client_ip,
        "client_port": rec.client_port,
        "accept_date": accept_date(rec.accept_time),
        "frontend_name": fe_name or rec.frontend,
        "backend_name": rec.backend,
        "server_name": rec.server,
    }
    if isinstance(rec, HttpLogRecord):
        d.update(
            TR=rec.t_request,
            Tw=rec.t_queue,
            Tc=rec.t_connect,
            Tr=rec.t_response,
            Ta=rec.t_active,
            status_code=rec.status,
        )
    else:
        d.update(Tw=rec.t_queue, Tc=rec.t_connect, Tt=rec.t_total)
    d.update(
        bytes_read=rec.bytes_read,
        termination_state=rec.term,
        actconn=rec.actconn,
        feconn=rec.feconn,
        beconn=rec.beconn,
        srv_conn=rec.srv_conn,
        retries=rec.retries,
        redispatched=rec.redispatched,
        srv_queue=rec.srv_queue,
        backend_queue=rec.backend_queue,
    )
    if isinstance(rec, HttpLogRecord):
        d["http_request"] = rec.request_line
    return json.dumps(d, separators=(",", ":"), ensure_ascii=True)


def format_record(rec: HttpLogRecord | TcpLogRecord, fmt: str, fe_name: str | None = None) -> str:
    """Format by name: "httplog", "tcplog" or "json". A TCP record asked for httplog gets
    tcplog (HAProxy falls back the same way for `option httplog` in TCP mode)."""
    if fmt == "json":
        return format_json(rec, fe_name)
    if fmt == "httplog" and isinstance(rec, HttpLogRecord):
        return format_httplog(rec, fe_name)
    if fmt in ("httplog", "tcplog"):
        return format_tcplog(rec, fe_name)
    raise ValueError(f"unknown log format {fmt!r} (known: httplog, tcplog, json)")


# --------------------------------------------------------------------------- syslog

# RFC 5424 severities; access lines are sent at "info", HAProxy's level for traffic logs.
SEVERITIES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "critical": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
INFO = SEVERITIES["info"]
FACILITY_LOCAL0 = 16  # HAProxy configurations conventionally log to local0
SYSLOG_MAX = 8192  # bytes per datagram: rsyslog's default maximum message size
SYSLOG_TAG = "pylb"


@functools.lru_cache(maxsize=4)
def _rfc3164_stamp(sec: int) -> str:
    t = time.localtime(sec)
    return f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def syslog_header(now: float, pid: int, severity: int = INFO) -> str:
    """RFC 3164 header as HAProxy sends it by default (no hostname):
    `<134>Feb  6 12:14:14 pylb[1234]: `."""
    pri = FACILITY_LOCAL0 * 8 + severity
    return f"<{pri}>{_rfc3164_stamp(int(now))} {SYSLOG_TAG}[{pid}]: "


def parse_target(target: str) -> tuple[str, object]:
    """Split a `log.target` value into (kind, argument):

    "stdout" / "stderr" / "none" -> (same, None); "file:/p" -> ("file", "/p");
    "syslog" / "syslog:/dev/log" -> ("unix", path);
    "syslog:udp:HOST:PORT" (HOST may be [v6]) -> ("udp", (host, port)).
    """
    if target in ("stdout", "stderr", "none"):
        return target, None
    if target.startswith("file:") and len(target) > 5:
        return "file", target[5:]
    if target == "syslog":
        return "unix", "/dev/log"
    if target.startswith("syslog:udp:"):
        rest = target[len("syslog:udp:") :]
        host, sep, port_s = rest.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"bad syslog target {target!r}: expected syslog:udp:HOST:PORT")
        return "udp", (host, int(port_s))
    if target.startswith("syslog:/"):
        return "unix", target[len("syslog:") :]
    raise ValueError(
        f"bad log target {target!r}: expected stdout, stderr, none, file:/PATH, "
        "syslog:/PATH or syslog:udp:HOST:PORT"
    )


class _Syslog:
    """A non-blocking datagram socket to syslog; a full or absent receiver costs a drop."""

    RECONNECT_AFTER = 1.0  # seconds between reconnect attempts to a vanished /dev/log

    __slots__ = ("_addr", "_family", "_next_try", "_sock")

    def __init__(self, kind: str, arg: object) -> None:
        if kind == "unix":
            self._family = socket.AF_UNIX
            self._addr: object = arg
        else:
            host, port = arg  # type: ignore[misc]
            # Resolved once at start: a DNS lookup per line would block the loop.
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self._family = info[0]
            self._addr = info[4]
        self._sock: socket.socket | None = None
        self._next_try = 0.0
        self._connect()

    def _connect(self) -> bool:
        self._next_try = time.monotonic() + self.RECONNECT_AFTER
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(self._addr)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        return True

    def send(self, data: bytes) -> bool:
        sock = self._sock
        if sock is None:
            if time.monotonic() < self._next_try or not self._connect():
                return False
            sock = self._sock
            assert sock is not None
        try:
            sock.send(data)
        except BlockingIOError:
            return False  # receiver's queue is full: drop, never wait
        except OSError as e:
            # The syslog daemon restarted (its socket is new) or nobody listens: reconnect
            # later, at most once per RECONNECT_AFTER.
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EPIPE):
                self.close()
                self._next_try = time.monotonic() + self.RECONNECT_AFTER
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --------------------------------------------------------------------------- the log


class AccessLog:
    """Formats and writes access log lines to the configured target. Loop thread only.

    One instance per worker (build it in the worker: the syslog tag carries its pid).
    The format of a line is `fmt` when given (an override for every line), else the
    frontend's entry in `formats` (frontend name -> the listen's `log_format`; see
    `from_config`), else httplog for HTTP records and tcplog for TCP records.
    """

    FLUSH_INTERVAL = 0.2  # seconds a stdout/file line may wait in the buffer
    FLUSH_BYTES = 64 * 1024  # or this much buffered text, whichever comes first

    enabled: bool = False

    def __init__(
        self,
        conf: LogConf | None = None,
        fmt: str | None = None,
        *,
        formats: dict[str, str] | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        if conf is None:  # AccessLog() is a disabled log (tests, tools), as before
            conf = LogConf(target="none")
        kind, arg = parse_target(conf.target)
        try:
            severity_max = SEVERITIES[conf.level]
        except KeyError:
            raise ValueError(
                f"unknown log level {conf.level!r} (known: {', '.join(SEVERITIES)})"
            ) from None
        for f in [fmt, *(formats or {}).values()]:
            if f is not None and f not in ("httplog", "tcplog", "json"):
                raise ValueError(f"unknown log format {f!r} (known: httplog, tcplog, json)")
        self.kind = kind
        self.fmt = fmt
        self.formats: dict[str, str] = dict(formats or {})
        # HAProxy semantics: `level` is the most verbose severity sent; access lines are
        # "info", so a level of notice or above turns the access log off.
        self.enabled = kind != "none" and severity_max >= INFO
        self.lines = 0  # lines handed to the target
        self.dropped = 0  # lines lost (syslog receiver full or absent, write errors)
        self._stream = stream  # stdout/stderr override (tests); None = sys.std* at flush
        self._file: IO[str] | None = None
        self._path: str | None = None
        self._syslog: _Syslog | None = None
        self._buf: list[str] = []
        self._buf_len = 0
        self._timer: asyncio.TimerHandle | None = None
        self._pid = os.getpid()
        if not self.enabled:
            return
        if kind == "file":
            self._path = str(arg)
            self._file = self._open(self._path)
        elif kind in ("unix", "udp"):
            self._syslog = _Syslog(kind, arg)

    @classmethod
    def from_config(cls, config: Config, **kw: object) -> AccessLog:
        """The worker's log: target from `global.log`, format per listen `log_format`."""
        formats = {lst.name: lst.log_format for lst in config.listens}
        return cls(config.global_.log, formats=formats, **kw)  # type: ignore[arg-type]

    @staticmethod
    def _open(path: str) -> IO[str]:
        # Line content is already escaped ASCII (or UTF-8 names); append mode so several
        # workers and logrotate's copytruncate keep working.
        return open(path, "a", encoding="utf-8", errors="backslashreplace", buffering=1 << 16)

    # -- entry points used by the data plane ---------------------------------------

    def http(self, rec: HttpLogRecord) -> None:
        if self.enabled:
            fmt = self.fmt or self.formats.get(rec.frontend) or "httplog"
            self._emit(format_record(rec, fmt))

    def tcp(self, rec: TcpLogRecord) -> None:
        if self.enabled:
            fmt = self.fmt or self.formats.get(rec.frontend) or "tcplog"
            self._emit(format_record(rec, fmt))

    # -- output ------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        self.lines += 1
        if self._syslog is not None:
            now = time.time()
            data = (syslog_header(now, self._pid) + line).encode("utf-8", "backslashreplace")
            if not self._syslog.send(data[:SYSLOG_MAX]):
                self.dropped += 1
            return
        self._buf.append(line)
        self._buf_len += len(line) + 1
        if self._buf_len >= self.FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (CLI tools, tests): write at once
                self.flush()
            else:
                self._timer = loop.call_later(self.FLUSH_INTERVAL, self._flush_timer)

    def _flush_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write out buffered stdout/file lines (one write call). Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        text = "\n".join(self._buf) + "\n"
        n = len(self._buf)
        self._buf.clear()
        self._buf_len = 0
        out = self._file or self._stream or (sys.stderr if self.kind == "stderr" else sys.stdout)
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # disk full, closed pipe: lose lines, keep serving
            self.dropped += n

    def reopen(self) -> None:
        """Reopen a file target (after logrotate moved it); other targets: flush only."""
        self.flush()
        if self._path is not None:
            old = self._file
            self._file = self._open(self._path)
            if old is not None:
                old.close()

    def close(self) -> None:
        """Flush and release the file or socket. The log is disabled afterwards."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None
        self.enabled = False

    def __repr__(self) -> str:
        return (
            f"<AccessLog {self.kind} enabled={self.enabled} "
            f"lines={self.lines} dropped={self.dropped}>"
        )
