"""The pure parts of perf/instructions.py (callgrind instructions per request): valgrind's
summary line, the arithmetic, the table, the nginx-like answers and wrk-like requests. No
valgrind is run; one plumbing test runs the load and proxy children on loopback without it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from perf import instructions as ins
from perf import microbench

VALGRIND_STDERR = """\
==12345== Callgrind, a call-graph generating cache profiler
==12345== Copyright (C) 2002-2017, and GNU GPL'd, by Josef Weidendorfer et al.
==12345== Command: /work/main/.venv/bin/python perf/instructions.py _proxy --tree /work/main
==12345==
==12345== For interactive control, run 'callgrind_control -h'.
==12345==
==12345== Events    : Ir
==12345== Collected : 1,149,009,785
==12345==
==12345== I   refs:      1,149,009,785
"""


def test_collected_line_is_the_count() -> None:
    assert ins.parse_collected(VALGRIND_STDERR) == 1_149_009_785


def test_collected_without_commas_and_the_last_one_wins() -> None:
    text = "==1== Collected : 10\nnoise\n==2== Collected : 2500\n"
    assert ins.parse_collected(text) == 2500


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Traceback (most recent call last):\n  ...\nValueError: boom\n",
        "==1== I   refs:      1,000\n",  # the summary without the Collected line
        "print from the program: Collected : 12\n",  # not valgrind's prefix
    ],
)
def test_no_collected_line_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="Collected"):
        ins.parse_collected(text)


def test_per_request_cancels_startup() -> None:
    startup = 900_000_000
    assert ins.per_request(startup + 1000 * 134_600, 1000, startup + 3000 * 134_600, 3000) == (
        134_600
    )


@pytest.mark.parametrize(("n1", "n2"), [(1000, 1000), (3000, 1000)])
def test_per_request_needs_n2_above_n1(n1: int, n2: int) -> None:
    with pytest.raises(ValueError, match="larger"):
        ins.per_request(1, n1, 2, n2)


def test_modes_expand_in_order_once_each() -> None:
    assert ins.expand_modes(["both"]) == ["http", "tcp"]
    assert ins.expand_modes(["all"]) == ["http", "tcp", "http_close"]
    assert ins.expand_modes(["tcp", "both", "http_close"]) == ["tcp", "http", "http_close"]
    with pytest.raises(ValueError, match="unknown mode"):
        ins.expand_modes(["udp"])


def test_table_ratio_is_to_the_first_tree_of_each_mode() -> None:
    rows = [
        ins.Row("http", "/a (211dcf7)", 134_612.4),
        ins.Row("http", "/b (1d250b2)", 141_343.0),
        ins.Row("tcp", "/a (211dcf7)", 10_800.0),
        ins.Row("tcp", "/b (1d250b2)", 10_260.0),
    ]
    lines = ins.render_table(rows).splitlines()
    assert lines[0] == "| mode | tree | instructions/request | ratio |"
    assert lines[1] == "|---|---|---:|---:|"
    assert lines[2] == "| http | /a (211dcf7) | 134,612 | 1.000 |"
    assert lines[3] == "| http | /b (1d250b2) | 141,343 | 1.050 |"
    assert lines[4] == "| tcp | /a (211dcf7) | 10,800 | 1.000 |"
    assert lines[5] == "| tcp | /b (1d250b2) | 10,260 | 0.950 |"


def test_request_is_what_wrk_sends() -> None:
    assert ins.request(8080, close=False) == microbench.REQUEST
    assert ins.request(18081, close=True) == (
        b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:18081\r\nConnection: close\r\n\r\n"
    )


def test_response_is_what_nginx_answers() -> None:
    assert ins.response(close=False) == microbench.RESPONSE
    closing = ins.response(close=True)
    head, _, body = closing.partition(b"\r\n\r\n")
    assert body == b"hello from nginx\n" and len(body) == 17
    assert ins.split_response_head(head + b"\r\n\r\n") == (200, 17)
    assert b"\r\nConnection: close" in head


def test_heads_split_across_reads_and_pipelined() -> None:
    a = ins.request(1, close=False)
    b = ins.request(1, close=True)
    heads, rest = ins.split_heads(a + b + a[:10])
    assert heads == [a, b]
    assert rest == a[:10]
    heads, rest = ins.split_heads(rest + a[10:])
    assert heads == [a] and rest == b""


@pytest.mark.parametrize(
    ("head", "close"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nconnection:close\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", False),
    ],
)
def test_backend_closes_like_nginx(head: bytes, close: bool) -> None:
    assert ins.wants_close(head) is close


def test_response_head_without_length() -> None:
    assert ins.split_response_head(b"HTTP/1.1 502 Bad Gateway\r\nX: y\r\n\r\n") == (502, None)


def test_timeout_grows_with_requests() -> None:
    assert ins.default_timeout(3000) > ins.default_timeout(1000) >= 120


def test_missing_valgrind_exits_2(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(ins.shutil, "which", lambda name: None)
    assert ins.main(["--mode", "http"]) == 2
    assert "valgrind is missing" in capsys.readouterr().err


def test_bad_counts_are_refused() -> None:
    with pytest.raises(SystemExit):
        ins.parse_args(["--n1", "3000", "--n2", "1000"])


@pytest.mark.parametrize("mode", list(ins.MODES))
def test_children_carry_every_request_without_valgrind(mode: str) -> None:
    """The plumbing: load and proxy processes on loopback, the tree's pylb imported, exactly
    n answers that are nginx's 200 (run_once raises otherwise)."""
    with tempfile.TemporaryDirectory() as tmp:
        got = ins.run_once(ins.ROOT, mode, 30, 4, Path(tmp), valgrind=False, timeout=60)
    assert got is None
