"""Access log: exact HAProxy lines, and every target on real files and sockets."""

from __future__ import annotations

import asyncio
import calendar
import json
import os
import re
import socket
import time

import pytest

from pylb.config.model import Address, Config, GlobalConf, Listen, LogConf, ServerConf
from pylb.proxy.accesslog import (
    AccessLog,
    HttpLogRecord,
    TcpLogRecord,
    accept_date,
    clear_date_cache,
    format_httplog,
    format_json,
    format_tcplog,
    parse_target,
    syslog_header,
)

# 06/Feb/2009:12:14:14.655 UTC, HAProxy's documentation example
T0 = calendar.timegm((2009, 2, 6, 12, 14, 14, 0, 0, 0)) + 0.655


def set_tz(tz: str | None) -> None:
    if tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = tz
    time.tzset()
    clear_date_cache()


@pytest.fixture
def utc():
    """HAProxy logs local time: pin the zone so expected lines are exact."""
    old = os.environ.get("TZ")
    set_tz("UTC")
    try:
        yield
    finally:
        set_tz(old)


def http_rec(**kw) -> HttpLogRecord:
    base = dict(
        client_ip="127.0.0.1",
        client_port=33317,
        accept_time=T0,
        frontend="keystone",
        backend="keystone",
        server="ctl01",
        t_request=10,
        t_queue=0,
        t_connect=30,
        t_response=69,
        t_active=109,
        status=200,
        bytes_read=2750,
        term="----",
        actconn=1,
        feconn=1,
        beconn=1,
        srv_conn=1,
        retries=0,
        redispatched=False,
        srv_queue=0,
        backend_queue=0,
        request_line="GET /v3 HTTP/1.1",
    )
    base.update(kw)
    return HttpLogRecord(**base)


def tcp_rec(**kw) -> TcpLogRecord:
    base = dict(
        client_ip="10.0.1.2",
        client_port=33313,
        accept_time=calendar.timegm((2009, 2, 6, 12, 12, 51, 0, 0, 0)) + 0.443,
        frontend="fnt",
        backend="bck",
        server="srv1",
        t_queue=0,
        t_connect=0,
        t_total=5007,
        bytes_read=212,
        term="--",
        actconn=0,
        feconn=0,
        beconn=0,
        srv_conn=0,
        retries=3,
        redispatched=False,
        srv_queue=0,
        backend_queue=0,
    )
    base.update(kw)
    return TcpLogRecord(**base)


HTTP_LINE = (
    "127.0.0.1:33317 [06/Feb/2009:12:14:14.655] keystone keystone/ctl01 "
    '10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 "GET /v3 HTTP/1.1"'
)
TCP_LINE = "10.0.1.2:33313 [06/Feb/2009:12:12:51.443] fnt bck/srv1 0/0/5007 212 -- 0/0/0/0/3 0/0"


# --------------------------------------------------------------------------- formats


def test_httplog_exact_line(utc):
    assert format_httplog(http_rec()) == HTTP_LINE


def test_httplog_failed_request_redispatched(utc):
    rec = http_rec(
        client_ip="::1",
        server="<NOSRV>",
        t_connect=-1,
        t_response=-1,
        status=503,
        bytes_read=217,
        term="SC--",
        retries=3,
        redispatched=True,
        request_line="POST /v2.1/servers HTTP/1.1",
    )
    assert format_httplog(rec, "nova_api") == (
        "::1:33317 [06/Feb/2009:12:14:14.655] nova_api keystone/<NOSRV> "
        '10/0/-1/-1/109 503 217 - - SC-- 1/1/1/1/+3 0/0 "POST /v2.1/servers HTTP/1.1"'
    )


def test_httplog_request_line_escaped_to_one_line(utc):
    line = format_httplog(http_rec(request_line='GET /a"b#c\x01\xe9 HTTP/1.1'))
    assert line.endswith('"GET /a#22b#23c#01#C3#A9 HTTP/1.1"')
    assert "\n" not in format_httplog(http_rec(request_line="GET /\r\nX: y HTTP/1.1"))


def test_tcplog_exact_line(utc):
    assert format_tcplog(tcp_rec()) == TCP_LINE
    assert format_tcplog(tcp_rec(retries=1, redispatched=True, term="SD")).endswith(
        " 212 SD 0/0/0/0/+1 0/0"
    )


def test_tcplog_of_an_http_record(utc):
    assert format_tcplog(http_rec()) == (
        "127.0.0.1:33317 [06/Feb/2009:12:14:14.655] keystone keystone/ctl01 "
        "0/30/109 2750 -- 1/1/1/1/0 0/0"
    )


def test_json_fields(utc):
    d = json.loads(format_json(http_rec()))
    assert d == {
        "timestamp": round(T0, 3),
        "client_ip": "127.0.0.1",
        "client_port": 33317,
        "accept_date": "06/Feb/2009:12:14:14.655",
        "frontend_name": "keystone",
        "backend_name": "keystone",
        "server_name": "ctl01",
        "TR": 10,
        "Tw": 0,
        "Tc": 30,
        "Tr": 69,
        "Ta": 109,
        "status_code": 200,
        "bytes_read": 2750,
        "termination_state": "----",
        "actconn": 1,
        "feconn": 1,
        "beconn": 1,
        "srv_conn": 1,
        "retries": 0,
        "redispatched": False,
        "srv_queue": 0,
        "backend_queue": 0,
        "http_request": "GET /v3 HTTP/1.1",
    }
    t = json.loads(format_json(tcp_rec()))
    assert (t["Tw"], t["Tc"], t["Tt"], t["termination_state"]) == (0, 0, 5007, "--")
    assert "http_request" not in t and "\n" not in format_json(http_rec(request_line="a\nb"))


def test_dates_are_local_time():
    old = os.environ.get("TZ")
    try:
        set_tz("CET-1")  # POSIX TZ: one hour east of UTC, no DST rule
        assert accept_date(T0) == "06/Feb/2009:13:14:14.655"
        assert syslog_header(T0, 42) == "<134>Feb  6 13:14:14 pylb[42]: "
    finally:
        set_tz(old)


def test_accept_date_milliseconds_truncate(utc):
    assert accept_date(T0 + 0.0009) == "06/Feb/2009:12:14:14.655"
    assert accept_date(float(int(T0))) == "06/Feb/2009:12:14:14.000"


def test_parse_target():
    assert parse_target("stdout") == ("stdout", None)
    assert parse_target("none") == ("none", None)
    assert parse_target("stderr") == ("stderr", None)
    assert parse_target("file:/var/log/pylb.log") == ("file", "/var/log/pylb.log")
    assert parse_target("syslog") == ("unix", "/dev/log")
    assert parse_target("syslog:/dev/log") == ("unix", "/dev/log")
    assert parse_target("syslog:udp:127.0.0.1:514") == ("udp", ("127.0.0.1", 514))
    assert parse_target("syslog:udp:[::1]:514") == ("udp", ("::1", 514))
    for bad in ("file:", "syslog:udp:host", "syslog:udp:h:99999", "tcp:x", "syslog:rel/path"):
        with pytest.raises(ValueError):
            parse_target(bad)


# --------------------------------------------------------------------------- targets


def test_none_and_default_do_nothing(tmp_path, capsys):
    for log in (AccessLog(), AccessLog(LogConf(target="none"))):
        assert log.enabled is False
        log.http(http_rec())
        log.tcp(tcp_rec())
        log.close()
        assert log.lines == 0
    assert capsys.readouterr().out == ""


def test_level_above_info_disables_access_log():
    assert AccessLog(LogConf(target="stdout", level="notice")).enabled is False
    assert AccessLog(LogConf(target="stdout", level="debug")).enabled is True
    with pytest.raises(ValueError, match="unknown log level"):
        AccessLog(LogConf(target="stdout", level="loud"))


def test_stdout_without_loop_writes_each_line(utc, capsys):
    log = AccessLog(LogConf(target="stdout"))
    log.http(http_rec())
    log.tcp(tcp_rec())
    assert capsys.readouterr().out == HTTP_LINE + "\n" + TCP_LINE + "\n"


def test_stderr_target(utc, capsys):
    AccessLog(LogConf(target="stderr")).tcp(tcp_rec())
    assert capsys.readouterr() == ("", TCP_LINE + "\n")


def test_format_chosen_per_frontend(utc, capsys):
    log = AccessLog(LogConf(target="stdout"), formats={"keystone": "json", "fnt": "httplog"})
    log.http(http_rec())
    log.tcp(tcp_rec())  # httplog asked for a TCP session: tcplog, as HAProxy does
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0])["server_name"] == "ctl01"
    assert out[1] == TCP_LINE
    with pytest.raises(ValueError, match="unknown log format"):
        AccessLog(LogConf(target="stdout"), fmt="clf")


def test_from_config_takes_each_listen_format():
    srv = (ServerConf("s", Address("127.0.0.1", 1)),)
    cfg = Config(
        global_=GlobalConf(log=LogConf(target="none")),
        listens=(
            Listen("api", (Address("127.0.0.1", 0),), srv),
            Listen("db", (Address("127.0.0.1", 0),), srv, mode="tcp", log_format="json"),
        ),
    )
    log = AccessLog.from_config(cfg)
    assert log.formats == {"api": "httplog", "db": "json"}
    assert log.enabled is False


async def test_file_target_batches_inside_the_loop(utc, tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(LogConf(target=f"file:{path}"))
    try:
        log.http(http_rec())
        log.tcp(tcp_rec())
        assert path.read_text() == ""  # buffered: one write for the batch
        log.flush()
        assert path.read_text() == HTTP_LINE + "\n" + TCP_LINE + "\n"
        # The timer writes a batch by itself.
        log.FLUSH_INTERVAL = 0.0
        log.http(http_rec(status=404))
        deadline = time.monotonic() + 5
        while path.read_text().count("\n") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert path.read_text().splitlines()[2] == HTTP_LINE.replace(" 200 ", " 404 ")
    finally:
        log.close()


def test_file_target_big_batch_written_at_once_and_reopen(utc, tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(LogConf(target=f"file:{path}"))
    try:
        log.http(http_rec())
        assert path.read_text() == HTTP_LINE + "\n"  # no loop: written at once
        rotated = tmp_path / "access.log.1"
        path.rename(rotated)
        log.reopen()
        log.tcp(tcp_rec())
        assert path.read_text() == TCP_LINE + "\n"
        assert rotated.read_text() == HTTP_LINE + "\n"
    finally:
        log.close()
    assert log.enabled is False


def syslog_re(line: str) -> re.Pattern:
    return re.compile(
        rb"<134>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d pylb\[%d\]: %s\Z"
        % (os.getpid(), re.escape(line.encode()))
    )


def test_syslog_unix_target_delivers(utc, tmp_path):
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(5)
    log = AccessLog(LogConf(target=f"syslog:{path}"))
    try:
        log.http(http_rec())
        assert syslog_re(HTTP_LINE).match(rx.recv(65536))
        log.tcp(tcp_rec())
        assert syslog_re(TCP_LINE).match(rx.recv(65536))
        assert (log.lines, log.dropped) == (2, 0)
    finally:
        log.close()
        rx.close()


def test_syslog_full_receiver_drops_without_blocking(utc, tmp_path):
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    rx.bind(path)
    log = AccessLog(LogConf(target=f"syslog:{path}"))
    try:
        for _ in range(5000):  # nobody reads: the queue fills, then lines are dropped
            log.http(http_rec())
            if log.dropped:
                break
        assert log.dropped >= 1
    finally:
        log.close()
        rx.close()


def test_syslog_absent_receiver_counts_drops_then_reconnects(utc, tmp_path):
    path = str(tmp_path / "log.sock")
    log = AccessLog(LogConf(target=f"syslog:{path}"))  # nobody listens yet: no error
    try:
        log.http(http_rec())
        assert log.dropped == 1
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(path)
        rx.settimeout(5)
        try:
            log._syslog._next_try = 0.0  # skip the reconnect back-off
            log.http(http_rec())
            assert syslog_re(HTTP_LINE).match(rx.recv(65536))
        finally:
            rx.close()
    finally:
        log.close()


def test_syslog_udp_target_delivers(utc):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    log = AccessLog(LogConf(target=f"syslog:udp:127.0.0.1:{port}"), fmt="json")
    try:
        log.tcp(tcp_rec())
        data = rx.recv(65536)
        head, _, body = data.partition(b": ")
        assert head.startswith(b"<134>") and head.endswith(b"pylb[%d]" % os.getpid())
        assert json.loads(body)["Tt"] == 5007
    finally:
        log.close()
        rx.close()
