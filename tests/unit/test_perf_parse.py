"""The pure parts of the benchmark (perf/bench.py, perf/profile.py): wrk output, /proc
accounting, medians and ratios, the markdown table, the profile summary. No load is run
and nothing is timed."""

from __future__ import annotations

import pytest

from perf import bench
from perf.profile import frame_key, parse_collapsed, top_functions

WRK_KEEPALIVE = """\
Running 5s test @ http://127.0.0.1:18081/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   175.76us  316.01us   4.09ms   93.09%
    Req/Sec    74.36k    22.57k   95.61k    70.00%
  Latency Distribution
     50%   80.00us
     75%  106.00us
     90%  338.00us
     99%    1.76ms
  73966 requests in 1.00s, 11.29MB read
Requests/sec:  73903.77
Transfer/sec:     11.28MB
"""

WRK_ERRORS = """\
Running 2s test @ http://127.0.0.1:1/big
  1 threads and 4 connections
  Latency Distribution
     50%    1.50s
     75%    1.60s
     90%    1.70s
     99%    1.02m
  250 requests in 2.00s, 2.44GB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 7
Requests/sec:    125.00
Transfer/sec:      1.22GB
"""


def test_parse_wrk_keepalive() -> None:
    r = bench.parse_wrk(WRK_KEEPALIVE)
    assert r.requests == 73966
    assert r.seconds == 1.0
    assert r.rps == pytest.approx(73903.77)
    assert r.bytes_read == pytest.approx(11.29 * 1024**2)
    assert r.bytes_per_s == pytest.approx(11.29 * 1024**2)
    assert r.latency_us == {50: 80.0, 75: 106.0, 90: 338.0, 99: 1760.0}
    assert (r.errors, r.non2xx) == (0, 0)


def test_parse_wrk_errors_and_units() -> None:
    r = bench.parse_wrk(WRK_ERRORS)
    assert r.errors == 10
    assert r.non2xx == 7
    assert r.latency_us[50] == 1.5e6
    assert r.latency_us[99] == pytest.approx(61.2e6)
    assert r.bytes_per_s == pytest.approx(2.44 * 1024**3 / 2)


def test_parse_wrk_without_summary_fails() -> None:
    with pytest.raises(ValueError):
        bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.parametrize(
    ("text", "us"),
    [("836.50us", 836.5), ("1.20ms", 1200.0), ("2.00s", 2e6), ("1.00m", 60e6)],
)
def test_parse_time_us(text: str, us: float) -> None:
    assert bench.parse_time_us(text) == pytest.approx(us)


@pytest.mark.parametrize("bad", ["", "1.0", "12 ms", "-1ms", "1e3us"])
def test_parse_time_us_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        bench.parse_time_us(bad)


def test_parse_bytes() -> None:
    assert bench.parse_bytes("512.00B") == 512
    assert bench.parse_bytes("1.50KB") == 1536
    assert bench.parse_bytes("2.00GB") == 2 * 1024**3
    with pytest.raises(ValueError):
        bench.parse_bytes("3 MB")


# A real line's shape; the comm holds a space and a ')' to check the split from the right.
STAT = (
    "4242 (py thon) x) S 4200 4242 4242 0 -1 4194560 10 0 0 0 "
    "1234 567 8 9 20 0 1 0 100 12345678 2048 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 "
    "17 0 0 0 0 0 0"
)


def test_parse_proc_stat() -> None:
    st = bench.parse_proc_stat(STAT)
    assert st.pid == 4242
    assert st.comm == "py thon) x"
    assert st.ppid == 4200
    assert (st.utime, st.stime) == (1234, 567)
    assert st.rss_pages == 2048


def test_cpu_accounting() -> None:
    a = bench.parse_proc_stat(STAT)
    before = bench.cpu_ticks([a])
    assert before == {4242: 1801}
    assert bench.user_ticks([a]) == {4242: 1234}
    assert bench.sys_ticks([a]) == {4242: 567}
    # the master grew 10 ticks; a worker appeared (restarted) with 5; CLK_TCK 100
    after = {4242: 1811, 4300: 5}
    assert bench.cpu_delta_us(before, after, 100) == pytest.approx(150_000.0)
    assert bench.per_unit(150_000.0, 1000) == 150.0
    assert bench.per_unit(1.0, 0) is None


def test_median_ratio_summarize() -> None:
    assert bench.median([3.0, None, 1.0, 2.0]) == 2.0
    assert bench.median([None]) is None
    assert bench.ratio(45.0, 50.0) == pytest.approx(0.9)
    assert bench.ratio(1.0, 0.0) is None
    assert bench.ratio(None, 1.0) is None
    samples = [{"rps": 10.0, "p99_us": 5.0}, {"rps": 30.0, "p99_us": None}, {"rps": 20.0}]
    s = bench.summarize(samples)
    assert s["rps"] == 20.0
    assert s["p99_us"] == 5.0
    assert s["cpu_us_per_req"] is None
    r = bench.ratios(
        {"haproxy": {"rps": 100.0, "p99_us": 2.0}, "pylb": {"rps": 90.0, "p99_us": 3.0}}
    )
    assert r["rps"] == pytest.approx(0.9)
    assert r["p99_us"] == pytest.approx(1.5)
    assert r["rss_kb"] is None


def test_alternate_order() -> None:
    assert bench.alternate(0) == ("haproxy", "pylb")
    assert bench.alternate(1) == ("pylb", "haproxy")


def test_judge_targets() -> None:
    verdicts = bench.judge(
        bench.TARGETS,
        {
            "http_keepalive": {"rps": 0.9, "cpu_us_per_req": 1.3, "p99_us": 1.0},
            "tcp_small": {"rps": 0.5},
        },
    )
    by = {v["target"]: v for v in verdicts}
    assert by["HTTP keep-alive req/s"]["holds"] is True  # the limit itself holds
    assert by["CPU per request, HTTP"]["holds"] is False
    assert by["p99 latency, HTTP keep-alive"]["holds"] is True
    assert by["TCP req/s"]["holds"] is False
    assert by["TCP bulk bytes/s"]["holds"] is None  # not measured
    assert by["CPU per request, HTTP"]["limit"] == "<= 1.2"


def _result() -> dict:
    med = {
        "haproxy": {"rps": 50000.0, "p50_us": 800.0, "p99_us": 2000.0, "cpu_us_per_req": 17.0},
        "pylb": {"rps": 40000.0, "p50_us": 1000.0, "p99_us": 2500.0, "cpu_us_per_req": 25.0},
    }
    scen = {
        "http_keepalive": {"median": med, "ratio": bench.ratios(med)},
        "idle": {
            "connections": 10000,
            "median": {
                "haproxy": {"rss_before_kb": 10240, "rss_after_kb": 20480, "rss_delta_kb": 10240,
                            "rss_per_conn_kb": 1.024},
                "pylb": {"rss_before_kb": 40960, "rss_after_kb": 71680, "rss_delta_kb": 30720,
                         "rss_per_conn_kb": 3.072},
            },
            "ratio": {"rss_delta_kb": 3.0, "rss_after_kb": 3.5},
        },
        "tls": {"skipped": "TLS termination is not implemented yet"},
    }  # fmt: skip
    return {
        "meta": {
            "date": "20261126T000000Z",
            "command": "perf/bench.py",
            "machine": "2 CPUs",
            "versions": "HAProxy 2.6",
            "pinning": "proxy on CPU 0",
            "rounds": 3,
            "duration": 5,
        },
        "scenarios": scen,
        "targets": bench.judge(bench.TARGETS, {k: v.get("ratio", {}) for k, v in scen.items()}),
    }


def test_render_markdown() -> None:
    md = bench.render_markdown(_result())
    assert "| http_keepalive | haproxy | 50,000 |" in md
    assert "| http_keepalive | pylb | 40,000 |" in md
    assert "| http_keepalive | 0.80 |" in md  # req/s ratio
    assert "2.50 ms" in md
    assert "| pylb | 40.0 MiB | 70.0 MiB | 30.0 MiB | 3.07 KiB |" in md
    assert "tls: TLS termination is not implemented yet" in md
    assert "| HTTP keep-alive req/s | >= 0.9 | 0.80 | **no** |" in md
    assert "| RSS of 10 000 idle connections | <= 2 | 3.00 | **no** |" in md
    assert "| TCP bulk bytes/s | >= 0.95 | - | not measured |" in md


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:1F90 0100007F:D2F2 06 00000000:00000000 00:00000000 00000000     0        0 0 3
"""


def test_count_established() -> None:
    # port 8080 = 0x1F90: one listener (0A), one ESTABLISHED (01), one TIME_WAIT (06);
    # the client's own end (local port 0xD2F0) does not count
    assert bench.count_established(PROC_NET_TCP, 8080) == 1
    assert bench.count_established(PROC_NET_TCP, 8081) == 0


def test_configs_name_every_server() -> None:
    ports = [9001, 9002, 9003]
    h = bench.haproxy_cfg(8000, 8001, ports, 11000)
    assert "nbthread 1" in h and "maxconn 11000" in h
    assert not any(line.strip().startswith("log") for line in h.splitlines())
    assert h.count("check inter 2s") == 6
    p = bench.pylb_yaml(8000, 8001, ports, 11000, workers=2)
    assert "target: none" in p and "workers: 2" in p
    assert p.count("127.0.0.1:9002") == 2
    n = bench.nginx_conf(bench.Path("/tmp/x"), ports, 11000)
    assert "access_log off;" in n and "worker_processes 1;" in n
    assert n.count("listen 127.0.0.1:") == 3


def test_profile_summary() -> None:
    raw = [
        "main (a.py:1);loop (b.py:2);data_received (c.py:10) 6",
        "main (a.py:1);loop (b.py:2);data_received (c.py:11);write (d.py:5) 3",
        "main (a.py:1);loop (b.py:2) 1",
        "",
        "garbage",
    ]
    stacks = parse_collapsed(raw)
    assert len(stacks) == 3
    total, self_top, incl_top = top_functions(stacks, n=3)
    assert total == 10
    assert self_top[0] == ("data_received (c.py)", 6)  # lines 10 and 11 are one function
    assert dict(incl_top)["main (a.py)"] == 10
    assert frame_key("<module> (pylb/__main__.py:3)") == "<module> (__main__.py)"
    assert frame_key("no parens") == "no parens"
