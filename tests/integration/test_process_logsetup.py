"""Event log targets (pylb.logsetup): stdout, file, syslog over UDP (loopback), none."""

from __future__ import annotations

import io
import logging
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
    assert data.startswith(b"<")  # syslog priority
    assert b"pylb[" in data and b"Server web/a is DOWN" in data


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
