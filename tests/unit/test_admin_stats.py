"""Stats formats: HAProxy's CSV, the JSON document, Prometheus metrics and the HTML page,
computed from real Backend objects."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from pylb.admin.page import human_duration, render_body, render_page
from pylb.admin.stats import (
    CSV_FIELDS,
    CSV_HEADER,
    Snapshot,
    WorkerProvider,
    iter_rows,
    metrics_text,
    server_status,
    status_class,
    to_csv,
    to_json,
)
from pylb.health.types import CheckStatus
from pylb.proxy.accesslog import AccessLog
from pylb.proxy.backend import AdminState
from pylb.proxy.state import ListenContext, WorkerState
from tests.unit.admin_helpers import CheckHandleStub, CheckStateStub, Provider, backends, listen

# HAProxy management guide 9.1: positions that monitoring tools hard-code.
KNOWN_POSITIONS = {
    "pxname": 0, "svname": 1, "scur": 4, "stot": 7, "bin": 8, "bout": 9, "econ": 13,
    "status": 17, "weight": 18, "lastchg": 23, "pid": 26, "iid": 27, "sid": 28, "type": 32,
    "check_status": 36, "check_code": 37, "check_duration": 38, "last_chk": 56,
    "check_desc": 65, "addr": 73, "mode": 75, "algo": 76, "uweight": 99,
}  # fmt: skip


def parse_csv(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    assert lines[0] == CSV_HEADER
    rows = []
    for cells in csv.reader(io.StringIO("\n".join(lines[1:]))):
        assert len(cells) == len(CSV_FIELDS) + 1  # trailing comma, as HAProxy's
        assert cells[-1] == ""
        rows.append(dict(zip(CSV_FIELDS, cells[:-1], strict=True)))
    return rows


def test_csv_header_is_haproxys_static_field_list():
    assert len(CSV_FIELDS) == 100
    assert len(set(CSV_FIELDS)) == 100
    for name, pos in KNOWN_POSITIONS.items():
        assert CSV_FIELDS[pos] == name
    assert CSV_HEADER.startswith(
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
        "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
        "sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
        "check_duration,"
    )
    assert CSV_HEADER.endswith(",uweight,")


def test_rows_frontend_servers_backend_in_order():
    bes = backends(listen("api"), listen("db", mode="tcp", balance="leastconn"))
    rows = parse_csv(to_csv(Provider(bes).snapshot()))
    names = [(r["pxname"], r["svname"]) for r in rows]
    assert names == [
        ("api", "FRONTEND"), ("api", "s1"), ("api", "s2"), ("api", "s3"), ("api", "BACKEND"),
        ("db", "FRONTEND"), ("db", "s1"), ("db", "s2"), ("db", "s3"), ("db", "BACKEND"),
    ]  # fmt: skip
    assert [r["type"] for r in rows[:5]] == ["0", "2", "2", "2", "1"]
    assert rows[0]["status"] == "OPEN"
    assert rows[1]["sid"] == "1" and rows[3]["sid"] == "3" and rows[4]["sid"] == "0"
    assert rows[5]["iid"] == "2"
    assert rows[5]["mode"] == "tcp" and rows[9]["algo"] == "leastconn"
    assert rows[2]["weight"] == "2" and rows[3]["bck"] == "1" and rows[3]["act"] == "0"
    assert rows[1]["addr"] == "127.0.0.1:9001"
    # fields pylb has no value for are empty, not zero
    assert rows[1]["throttle"] == "" and rows[1]["hrsp_2xx"] == "" and rows[1]["rate"] == ""


def test_counters_reach_the_rows():
    (be,) = backends()
    s1 = be.server("s1")
    s1.take()
    s1.take()
    s1.drop()
    s1.bytes_in, s1.bytes_out, s1.failed_conns, s1.retries = 100, 2000, 3, 4
    be.bytes_in, be.bytes_out, be.total_conns = 100, 2000, 2
    rows = {r["svname"]: r for r in iter_rows(Provider([be]).snapshot())}
    assert (rows["s1"]["scur"], rows["s1"]["smax"], rows["s1"]["stot"]) == (1, 2, 2)
    assert (rows["s1"]["bin"], rows["s1"]["bout"]) == (100, 2000)
    assert rows["s1"]["econ"] == 3 and rows["s1"]["wretr"] == 4
    assert rows["BACKEND"]["econ"] == 3 and rows["BACKEND"]["lbtot"] == 2
    assert rows["BACKEND"]["bin"] == 100


def test_status_words():
    (be,) = backends()
    s1, s2, s3 = be.servers
    assert server_status(s1) == "no check"
    s1.check = CheckHandleStub()
    assert server_status(s1) == "UP"
    s1.check.state.health = 3  # rise 2 fall 3: top is 4; one failure seen
    assert server_status(s1) == "UP 2/3"
    s1.oper_up = False
    s1.check.state.health = 1
    assert server_status(s1) == "DOWN 1/2"
    s1.check.state.health = 0
    assert server_status(s1) == "DOWN"
    s2.admin = AdminState.DRAIN
    assert server_status(s2) == "DRAIN"
    s3.admin = AdminState.MAINT
    assert server_status(s3) == "MAINT"
    assert [status_class(w) for w in ("UP", "UP 2/3", "DOWN 1/2", "DOWN", "MAINT")] == [
        "up", "going-down", "going-up", "down", "maint",
    ]  # fmt: skip
    assert status_class("no check") == "nocheck" and status_class("DRAIN") == "drain"


def test_backend_down_when_nothing_usable():
    (be,) = backends()
    for s in be.servers:
        s.oper_up = False
        be.server_changed(s)
    rows = {r["svname"]: r for r in iter_rows(Provider([be]).snapshot())}
    assert rows["BACKEND"]["status"] == "DOWN"
    assert rows["BACKEND"]["act"] == 0 and rows["BACKEND"]["bck"] == 0
    be.servers[2].oper_up = True  # the backup
    be.server_changed(be.servers[2])
    rows = {r["svname"]: r for r in iter_rows(Provider([be]).snapshot())}
    assert rows["BACKEND"]["status"] == "UP" and rows["BACKEND"]["bck"] == 1


def test_check_fields():
    (be,) = backends()
    s1 = be.server("s1")
    s1.check = CheckHandleStub(CheckStateStub(rise=3, fall=2))
    s1.check.state.failed_checks = 5
    s1.check.state.down_transitions = 1
    s1.check_status = CheckStatus.L7STS
    s1.check_code = 503
    s1.check_duration = 0.0023
    s1.check_desc = "Service Unavailable"
    rows = parse_csv(to_csv(Provider([be]).snapshot()))
    r = rows[1]
    assert r["check_status"] == "L7STS"
    assert (r["check_code"], r["check_duration"]) == ("503", "2")
    assert r["check_desc"] == "Layer7 wrong status"
    assert r["last_chk"] == "Service Unavailable"
    assert (r["check_rise"], r["check_fall"], r["check_health"]) == ("3", "2", "4")
    assert (r["chkfail"], r["chkdown"]) == ("5", "1")
    s1.check.running = True
    s1.check_status = CheckStatus.L4CON
    s1.check_desc = "Connection refused, really"  # a comma: quoted, still one cell
    r = parse_csv(to_csv(Provider([be]).snapshot()))[1]
    assert r["check_status"] == "* L4CON" and r["check_code"] == ""
    assert r["last_chk"] == "Connection refused, really"


def test_json_document():
    (be,) = backends(listen("db", balance="writer-pin"))
    doc = to_json(Provider([be]).snapshot())
    json.dumps(doc)  # serialisable
    assert doc["info"]["name"] == "pylb" and doc["info"]["pid"] == 4242
    (lst,) = doc["listeners"]
    assert lst["name"] == "db" and lst["balance"] == "writer-pin" and lst["writer"] == "s1"
    assert lst["frontend"]["svname"] == "FRONTEND"
    assert lst["backend"]["status"] == "UP"
    assert [s["svname"] for s in lst["servers"]] == ["s1", "s2", "s3"]
    assert lst["servers"][0]["state_class"] == "nocheck"
    assert "writer" not in doc and "vrrp" not in doc
    doc = to_json(
        Provider(
            [be],
            writer={"db": {"writer": "s2", "wsrep_local_state": "Synced"}},
            vrrp=[{"name": "VI_1", "state": "MASTER", "priority": 110}],
        ).snapshot()
    )
    assert doc["writer"]["db"]["writer"] == "s2"
    assert doc["vrrp"][0]["state"] == "MASTER"


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_values():
    (be,) = backends()
    s1, s2, _ = be.servers
    s1.bytes_in = 1234
    s1.take()
    s2.oper_up = False
    be.server_changed(s2)
    text = metrics_text(Provider([be])).decode()
    m = metric_samples(text)
    lab = (("proxy", "api"), ("server", "s1"))
    assert m[("pylb_server_bytes_in_total", lab)] == 1234
    assert m[("pylb_server_current_sessions", lab)] == 1
    assert m[("pylb_server_sessions_total", lab)] == 1
    assert m[("pylb_server_up", lab)] == 1
    down = (("proxy", "api"), ("server", "s2"))
    assert m[("pylb_server_up", down)] == 0
    assert m[("pylb_server_status", (*down, ("state", "DOWN")))] == 1
    assert m[("pylb_server_status", (*down, ("state", "UP")))] == 0
    assert m[("pylb_server_status", (*lab, ("state", "no check")))] == 1
    assert m[("pylb_backend_up", (("proxy", "api"),))] == 1
    assert m[("pylb_backend_active_servers", (("proxy", "api"),))] == 1
    assert "# TYPE pylb_server_bytes_in_total counter" in text


def test_metrics_vrrp_only_when_provided():
    (be,) = backends()
    assert "pylb_vrrp" not in metrics_text(Provider([be])).decode()
    text = metrics_text(Provider([be], vrrp=[{"name": "VI_1", "state": "MASTER"}])).decode()
    assert metric_samples(text)[("pylb_vrrp_master", (("instance", "VI_1"),))] == 1


def test_page_renders_statuses_and_optional_sections():
    (be,) = backends()
    _s1, s2, s3 = be.servers
    s2.oper_up = False
    s2.check_status = CheckStatus.L4CON
    s2.check_duration = 0.001
    s3.admin = AdminState.MAINT
    html = render_page(Provider([be]).snapshot(), refresh_ms=2000)
    assert html.startswith("<!DOCTYPE html>")
    assert 'id="srv-api-s2" class="down"' in html
    assert 'id="srv-api-s3" class="maint backup"' in html
    assert 'id="srv-api-s1" class="nocheck"' in html
    assert "L4CON in 1ms" in html
    assert "setTimeout(tick, ms)" in html and "var ms = 2000;" in html
    assert 'id="writer"' not in html and 'id="vrrp"' not in html
    body = render_body(
        Provider(
            [be],
            writer={"api": {"writer": "s1"}},
            vrrp=[{"name": "<script>x</script>", "state": "MASTER", "vips": ["192.0.2.1/24"]}],
        ).snapshot()
    )
    assert 'id="writer"' in body and 'id="vrrp"' in body
    assert "<script>x" not in body and "&lt;script&gt;x" in body
    assert "192.0.2.1/24" in body


def test_human_duration():
    assert [human_duration(s) for s in (0, 59, 61, 3700, 90000)] == [
        "0s", "59s", "1m1s", "1h1m", "1d1h",
    ]  # fmt: skip
    assert human_duration(None) == ""


def test_empty_snapshot():
    snap = Snapshot(backends=[])
    assert to_csv(snap) == CSV_HEADER + "\n"
    assert to_json(snap)["listeners"] == []


def test_worker_provider_reads_the_workers_objects():
    loop = asyncio.new_event_loop()
    try:
        state = WorkerState(loop=loop, access_log=AccessLog(), maxconn=500)
        (be,) = backends()
        state.backends[be.name] = be
        ctx = ListenContext(conf=be.conf, backend=be, worker=state, feconn=3, total_conns=9)
        worker = SimpleNamespace(state=state, contexts={be.name: ctx})
        prov = WorkerProvider(worker, info={"workers": 2})
        assert prov.snapshot().vrrp is None
        prov.vrrp_hook = lambda: [{"name": "VI_1", "state": "BACKUP"}]
        snap = prov.snapshot()
        assert snap.backends == [be] and snap.contexts["api"] is ctx
        assert snap.info["maxconn"] == 500 and snap.info["workers"] == 2
        assert snap.vrrp == [{"name": "VI_1", "state": "BACKUP"}]
        fe = next(iter_rows(snap))
        assert (fe["scur"], fe["stot"], fe["slim"]) == (3, 9, 500)
        state.draining = True
        assert next(iter_rows(prov.snapshot()))["status"] == "STOP"
    finally:
        loop.close()
