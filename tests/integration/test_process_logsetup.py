"""Event log targets (pylb.logsetup): stdout, file, syslog over UDP (loopback), none."""

from __future__ import annotations

import io
import logging
import os
import re
import socket

import pytest

from pylb.config.model import LogConf
from pylb.logsetup import NOTICE, parse_level, setup_logging


@pytest.fixture(autouse=True)
def restore():
    yield
    setup_logging(LogConf(target="none"))


def test_stream_target_levels_and_haproxy_wording():
    buf = io.StringIO()
    setup_logging(LogConf(target="stdout", level="notice"), stream=buf)
    log = logging.getLogger("pylb.worker")
    log.info("not shown at notice")
    log.log(NOTICE, "Proxy %s started.", "keystone")
    text = buf.getvalue()
    assert "not shown" not in text
    assert "[NOTICE]" in text and "Proxy keystone started." in text


def test_file_target(tmp_path):
    path = tmp_path / "pylb.log"
    setup_logging(LogConf(target=f"file:{path}", level="info"))
    logging.getLogger("pylb.master").warning("Worker %d exited with code %d", 42, 1)
    setup_logging(LogConf(target="none"))  # closes the file
    assert "Worker 42 exited with code 1" in path.read_text()


def test_syslog_udp_target_on_loopback():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    try:
        port = rx.getsockname()[1]
        setup_logging(LogConf(target=f"syslog:udp:127.0.0.1:{port}", level="info"))
        logging.getLogger("pylb.master").error("Server web/a is DOWN")
        data = rx.recv(4096)
    finally:
        rx.close()
    # RFC 5424 by default over UDP: <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG
    pri, _, rest = data.decode().partition(">")
    assert pri == "<27"  # facility daemon (3) * 8 + err (3)
    version, stamp, host, app, procid, msgid, sd, msg = rest.split(" ", 7)
    assert (version, app, procid, msgid, sd) == ("1", "pylb", str(os.getpid()), "-", "-")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert host == (socket.gethostname() or "-")
    assert msg == "Server web/a is DOWN"


def test_syslog_udp_rfc3164_and_notice_severity():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    try:
        port = rx.getsockname()[1]
        conf = LogConf(target=f"syslog:udp:127.0.0.1:{port}", level="notice", format="rfc3164")
        setup_logging(conf)
        logging.getLogger("pylb.master").info("below the level")
        logging.getLogger("pylb.master").log(NOTICE, "Loading success.")
        data = rx.recv(4096).decode()
    finally:
        rx.close()
    # <29> = daemon.notice; "Mmm dd hh:mm:ss HOST pylb[PID]: MSG" (hostname over the network)
    m = re.fullmatch(r"<29>(\w{3} [ \d]\d \d\d:\d\d:\d\d) (\S+) pylb\[(\d+)\]: (.*)", data)
    assert m, data
    assert m.group(3) == str(os.getpid()) and m.group(4) == "Loading success."


@pytest.mark.parametrize(
    ("fmt", "pattern"),
    [
        (None, r"<28>\w{3} [ \d]\d \d\d:\d\d:\d\d pylb\[\d+\]: Worker 7 exited"),
        ("rfc5424", r"<28>1 \S+Z \S+ pylb \d+ - - Worker 7 exited"),
    ],
)
def test_syslog_unix_datagram_socket(tmp_path, fmt, pattern):
    """`syslog:/path` (as /dev/log): RFC 3164 without hostname by default, as glibc's
    syslog() writes to the local socket; RFC 5424 on request."""
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(5)
    try:
        setup_logging(LogConf(target=f"syslog:{path}", level="info", format=fmt))
        logging.getLogger("pylb.master").warning("Worker 7 exited")
        data = rx.recv(4096).decode()
    finally:
        setup_logging(LogConf(target="none"))
        rx.close()
    assert re.fullmatch(pattern, data), data


def test_none_disables(capsys):
    setup_logging(LogConf(target="none"))
    log = logging.getLogger("pylb.worker")
    assert not log.isEnabledFor(logging.CRITICAL)
    log.critical("must go nowhere")  # not even to logging's last-resort stderr handler
    assert "must go nowhere" not in capsys.readouterr().err


def test_levels():
    assert parse_level("err") == logging.ERROR
    assert parse_level("notice") == NOTICE
    with pytest.raises(ValueError):
        parse_level("loud")
