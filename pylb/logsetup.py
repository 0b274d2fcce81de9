"""Event logging (not the access log): start/stop, worker restarts, server state changes.

Every module logs through `logging.getLogger("pylb....")`; this module decides where the
lines go, from `global.log` (`LogConf`): `stdout`, `file:/path`, `syslog:/dev/log`,
`syslog:udp:HOST:PORT`, or `none`. Levels use syslog's names as HAProxy does (`emerg` ..
`debug`, plus `notice`), so `level: notice` in a config means what it means for HAProxy.

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
SYSLOG_FORMAT = "pylb[%(process)d]: %(message)s"

_installed: list[logging.Handler] = []


def parse_level(name: str) -> int:
    """Level from a syslog/HAProxy name; ValueError for an unknown one."""
    try:
        return LEVELS[name.lower()]
    except KeyError:
        known = ", ".join(LEVELS)
        raise ValueError(f"unknown log level {name!r}, expected one of {known}") from None


def make_handler(target: str, *, stream: TextIO | None = None) -> logging.Handler | None:
    """The handler for a `global.log.target` string; None for `none`."""
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
            h = logging.handlers.SysLogHandler(
                address=(host, int(port)), socktype=socket.SOCK_DGRAM
            )
        else:
            h = logging.handlers.SysLogHandler(address=rest or "/dev/log")
        h.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        return h
    raise ValueError(f"unknown log target {target!r}")


def setup_logging(conf: LogConf | None = None, *, stream: TextIO | None = None) -> logging.Logger:
    """Route the `pylb` logger to `conf.target` at `conf.level`; idempotent (replaces the
    handlers a previous call installed, so a reload can re-point the log)."""
    conf = conf or LogConf()
    logger = logging.getLogger(ROOT)
    level = parse_level(conf.level)
    handler = make_handler(conf.target, stream=stream)  # may raise: the old target stays
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
