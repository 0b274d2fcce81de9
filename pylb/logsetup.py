"""Event logging (not the access log): start/stop, worker restarts, server state changes.

Every module logs through `logging.getLogger("pylb....")`; this module decides where the
lines go, from `global.log` (`LogConf`): `stdout`, `file:/path`, `syslog:/dev/log`,
`syslog:udp:HOST:PORT`, or `none`. Syslog messages (facility daemon) are RFC 5424
(`<PRI>1 TIMESTAMP HOST pylb PID - - MSG`) or RFC 3164 (`<PRI>Mmm dd hh:mm:ss pylb[PID]:
MSG`, the hostname left out on a local socket as glibc's syslog() does, so journald and
rsyslog read `pylb` as the identifier): `log.format`, by default 3164 on a unix socket
and 5424 over UDP. Under systemd, `stdout` goes to the journal as it is. Levels use
syslog's names as HAProxy does (`emerg` .. `debug`, plus `notice`), so `level: notice`
in a config means what it means for HAProxy.

Messages keep HAProxy's wording ("Proxy keystone started.", "Stopping proxy keystone in 0 ms.")
so operators' grep patterns and alerts keep working. Handlers format lazily: with
`target: none` the `pylb` logger's level is above CRITICAL, so a `log.info(...)` costs one
level check.

Called once per process: in the master before forking (children inherit the handlers) and
by `pylb demo`. A file target uses `WatchedFileHandler`, so logrotate's move-and-create
works without a signal.
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys
import time
from typing import TextIO

from pylb.config.model import LogConf

NOTICE = 25  # between INFO and WARNING, as syslog's notice is between info and warning
logging.addLevelName(NOTICE, "NOTICE")

# syslog severity names (and the usual aliases) -> logging levels
LEVELS: dict[str, int] = {
    "emerg": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "crit": logging.CRITICAL,
    "critical": logging.CRITICAL,
    "err": logging.ERROR,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "notice": NOTICE,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

ROOT = "pylb"
# HAProxy's stderr format: "[NOTICE]   (1234) : Loading success." plus a timestamp.
STREAM_FORMAT = "%(asctime)s [%(levelname)s] (%(process)d) : %(message)s"

_installed: list[logging.Handler] = []
APP_NAME = "pylb"


class SyslogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler with the whole syslog header (the stdlib one only writes `<PRI>`),
    syslog's `notice` severity for NOTICE, and no trailing NUL."""

    def __init__(
        self,
        address: str | tuple[str, int],
        *,
        socktype: int | None = None,
        rfc: str = "rfc5424",
    ) -> None:
        super().__init__(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON, socktype=socktype
        )
        self.rfc = rfc
        self.append_nul = False
        self.local = isinstance(address, str)
        self.hostname = socket.gethostname() or "-"

    def mapPriority(self, levelName: str) -> str:
        if levelName == "NOTICE":
            return "notice"
        return super().mapPriority(levelName)

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if self.rfc == "rfc3164":
            stamp = time.strftime("%b %e %H:%M:%S", time.localtime(record.created))
            host = "" if self.local else self.hostname + " "
            return f"{stamp} {host}{APP_NAME}[{record.process}]: {msg}"
        usec = int(record.created * 1_000_000) % 1_000_000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"1 {stamp}.{usec:06d}Z {self.hostname} {APP_NAME} {record.process} - - {msg}"


def parse_level(name: str) -> int:
    """Level from a syslog/HAProxy name; ValueError for an unknown one."""
    try:
        return LEVELS[name.lower()]
    except KeyError:
        known = ", ".join(LEVELS)
        raise ValueError(f"unknown log level {name!r}, expected one of {known}") from None


def make_handler(
    target: str, *, stream: TextIO | None = None, syslog_format: str | None = None
) -> logging.Handler | None:
    """The handler for a `global.log.target` string; None for `none`. `syslog_format`:
    rfc5424 | rfc3164 | None (3164 on a unix socket, 5424 over UDP)."""
    if target == "none":
        return None
    if target == "stdout":
        h: logging.Handler = logging.StreamHandler(stream or sys.stdout)
        h.setFormatter(logging.Formatter(STREAM_FORMAT))
        return h
    if target == "stderr":
        h = logging.StreamHandler(stream or sys.stderr)
        h.setFormatter(logging.Formatter(STREAM_FORMAT))
        return h
    if target.startswith("file:"):
        h = logging.handlers.WatchedFileHandler(target[5:])
        h.setFormatter(logging.Formatter(STREAM_FORMAT))
        return h
    if target.startswith("syslog:"):
        rest = target[7:]
        if rest.startswith("udp:"):
            host, _, port = rest[4:].rpartition(":")
            if not port.isdigit() or len(port) > 5:
                raise ValueError(f"bad syslog target {target!r}, expected syslog:udp:HOST:PORT")
            host = host.strip("[]")
            h = SyslogHandler(
                (host, int(port)), socktype=socket.SOCK_DGRAM, rfc=syslog_format or "rfc5424"
            )
        else:
            h = SyslogHandler(rest or "/dev/log", rfc=syslog_format or "rfc3164")
        h.setFormatter(logging.Formatter("%(message)s"))
        return h
    raise ValueError(f"unknown log target {target!r}")


def setup_logging(conf: LogConf | None = None, *, stream: TextIO | None = None) -> logging.Logger:
    """Route the `pylb` logger to `conf.target` at `conf.level`; idempotent (replaces the
    handlers a previous call installed, so a reload can re-point the log)."""
    conf = conf or LogConf()
    logger = logging.getLogger(ROOT)
    level = parse_level(conf.level)
    # may raise: the old target stays
    handler = make_handler(conf.target, stream=stream, syslog_format=conf.format)
    for h in _installed:
        logger.removeHandler(h)
        h.close()
    _installed.clear()
    logger.propagate = False  # our lines go to the configured target, not to the root logger
    if handler is None:
        # Above CRITICAL: every `pylb.*` logger (they inherit this level) answers
        # isEnabledFor() with False at once; the NullHandler keeps logging's last-resort
        # stderr handler from printing warnings anyway.
        handler = logging.NullHandler()
        logger.setLevel(logging.CRITICAL + 1)
    else:
        logger.setLevel(level)
    logger.addHandler(handler)
    _installed.append(handler)
    return logger
