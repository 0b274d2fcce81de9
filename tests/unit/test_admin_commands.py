"""Runtime API commands over real Backends: parsing, HAProxy's error words, and the
effect of each state change on the balancer."""

from __future__ import annotations

import json

import pytest

from pylb.admin.commands import (
    HELP,
    SERVERS_STATE_HEADER,
    UNKNOWN,
    CommandError,
    apply_servers_state,
    execute,
    execute_many,
    parse_weight,
)
from pylb.admin.stats import CSV_HEADER
from pylb.config.model import Address, ServerConf
from pylb.health.types import CheckStatus
from pylb.proxy.backend import AdminState
from tests.unit.admin_helpers import CheckHandleStub, Provider, backends, listen


@pytest.fixture
def prov() -> Provider:
    return Provider(backends(listen("api"), listen("db", balance="writer-pin")))


def picks(be, n: int = 12) -> set[str]:
    return {s.name for s in (be.pick() for _ in range(n)) if s is not None}


def test_answers_end_with_an_empty_line(prov):
    assert execute("help", prov) == HELP + "\n"
    assert execute("disable server api/s1", prov) == "\n"
    assert execute("show info", prov).endswith("\n\n")
    assert execute("   ", prov) == ""


def test_disable_enable_server(prov):
    be = prov.backends[0]
    assert picks(be) == {"s1", "s2"}
    assert execute("disable server api/s1", prov) == "\n"
    assert be.server("s1").admin is AdminState.MAINT
    assert picks(be) == {"s2"}
    assert execute("enable server api/s1", prov) == "\n"
    assert be.server("s1").admin is AdminState.READY
    assert picks(be) == {"s1", "s2"}


def test_set_state_and_drain_semantics(prov):
    be = prov.backends[0]
    s1 = be.server("s1")
    s1.take()  # a session in progress on s1
    assert execute("set server api/s1 state drain", prov) == "\n"
    assert s1.admin is AdminState.DRAIN
    assert picks(be) == {"s2"}  # no new session
    assert s1.cur_conns == 1  # the existing one is not cut ...
    s1.drop()  # ... and finishes normally
    assert s1.cur_conns == 0
    assert execute("set server api/s1 state maint", prov) == "\n"
    assert s1.admin is AdminState.MAINT
    assert execute("set server api/s1 state ready", prov) == "\n"
    assert picks(be) == {"s1", "s2"}


def test_all_active_drained_falls_back_to_backup(prov):
    be = prov.backends[0]
    execute_many("set server api/s1 state drain;set server api/s2 state maint", prov)
    assert picks(be) == {"s3"}


def test_weight(prov):
    be = prov.backends[0]
    assert execute("set server api/s2 weight 0", prov) == "\n"
    assert be.server("s2").weight == 0
    assert picks(be) == {"s1"}
    assert execute("set server api/s2 weight 256", prov) == "\n"
    assert be.server("s2").weight == 256
    assert execute("set server api/s2 weight 50%", prov) == "\n"
    assert be.server("s2").weight == 1  # 50% of the configured 2
    assert "Absolute weight can only be between 0 and 256" in execute(
        "set server api/s2 weight 257", prov
    )
    assert "between 0 and 100%" in execute("set server api/s2 weight 101%", prov)
    for bad in ("-1", "1e3", "0x10", "", "½"):
        with pytest.raises(CommandError):
            parse_weight(bad, 1)
    assert be.server("s2").weight == 1


def test_errors_in_haproxys_words(prov):
    assert execute("disable server nope/s1", prov) == "No such backend.\n\n"
    assert execute("disable server api/nope", prov) == "No such server.\n\n"
    assert execute("disable server api", prov) == "Require 'backend/server'.\n\n"
    assert execute("disable server", prov) == "Require 'backend/server'.\n\n"
    assert execute("set server api/s1 state up", prov) == (
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
    )
    assert "only supports" in execute("set server api/s1 addr 1.2.3.4", prov)
    assert execute("frobnicate", prov) == UNKNOWN + "\n"
    assert execute("show writer nope", prov) == "No such backend.\n\n"


def test_show_info(prov):
    out = execute("show info", prov)
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["Name"] == "pylb" and lines["Pid"] == "4242"
    assert lines["Listeners"] == "2" and lines["Servers"] == "6"


def test_show_stat_csv_and_json(prov):
    out = execute("show stat", prov)
    assert out.splitlines()[0] == CSV_HEADER
    assert out.endswith("\n\n")
    doc = json.loads(execute("show stat json", prov))
    assert [lst["name"] for lst in doc["listeners"]] == ["api", "db"]


def test_show_servers_state(prov):
    be = prov.backends[0]
    s1 = be.server("s1")
    s1.check = CheckHandleStub()
    s1.check_status = CheckStatus.L4OK
    execute("set server api/s2 state drain", prov)
    out = execute("show servers state api", prov).rstrip("\n").splitlines()
    assert out[0] == "1" and out[1] == SERVERS_STATE_HEADER
    ncols = len(SERVERS_STATE_HEADER[2:].split())
    rows = [line.split() for line in out[2:]]
    assert len(rows) == 3 and all(len(r) == ncols for r in rows)
    hdr = SERVERS_STATE_HEADER[2:].split()
    r1, r2 = dict(zip(hdr, rows[0], strict=True)), dict(zip(hdr, rows[1], strict=True))
    assert (r1["be_name"], r1["srv_name"], r1["srv_op_state"], r1["srv_admin_state"]) == (
        "api", "s1", "2", "0",
    )  # fmt: skip
    assert r1["srv_check_status"] == "6" and r1["srv_check_result"] == "3"  # L4OK, passed
    assert r1["srv_port"] == "9001"
    assert r2["srv_admin_state"] == "8"  # SRV_ADMF_FDRAIN
    assert r2["srv_iweight"] == "2"
    all_rows = execute("show servers state", prov).rstrip("\n").splitlines()[2:]
    assert len(all_rows) == 6
    assert execute("show servers state nope", prov) == "Can't find backend 'nope'.\n\n"


def test_show_and_set_writer(prov):
    out = execute("show writer db", prov)
    assert out.startswith("writer s1 epoch ")
    assert "\n2 s2 UP ready 0\n" in out
    assert "does not use 'balance writer-pin'" in execute("show writer api", prov)
    assert execute("show writer nope", prov) == "No such backend.\n\n"
    assert execute("set writer db s2", prov).startswith("db: writer is now s2 (was s1)")
    assert execute("show writer db", prov).startswith("writer s2 epoch ")
    db = next(b for b in prov.backends if b.name == "db")
    assert db.pick().name == "s2"
    assert "s9" in execute("set writer db s9", prov)  # WriterError names the unknown server
    assert execute("set writer db", prov) == "Usage: set writer <listen> <server>.\n\n"


def test_vrrp_hook(prov):
    assert execute("show vrrp", prov) == "VRRP is not available in this process.\n\n"
    prov.vrrp = [{"name": "VI_1", "state": "MASTER", "priority": 110, "vips": ["192.0.2.1/24"]}]
    assert execute("show vrrp", prov) == (
        "VI_1:\n  state: MASTER\n  priority: 110\n  vips: 192.0.2.1/24\n\n"
    )


def test_several_commands_per_line(prov):
    out = execute_many("disable server api/s1; show servers state api;help", prov)
    assert out.startswith("\n1\n# be_id")  # disable: an empty answer, its blank line
    assert out.splitlines()[3].startswith("1 api 1 s1 127.0.0.1 2 1 ")  # s1: FMAINT
    assert out.endswith(HELP + "\n")


def test_unchanged_state_is_idempotent(prov):
    be = prov.backends[0]
    s1 = be.server("s1")
    execute("disable server api/s1", prov)
    changed = s1.last_change
    execute("disable server api/s1", prov)
    assert s1.last_change == changed


def test_servers_state_carried_to_a_new_generation(prov):
    old_api = prov.backends[0]
    execute_many(
        "disable server api/s1;set server api/s2 state drain;set server api/s3 weight 9", prov
    )
    old_api.server("s3").oper_up = False
    dump = execute("show servers state", prov)

    # the new generation: same config for api except s2's configured weight changed
    new = backends(
        listen(
            "api",
            servers=[
                ServerConf("s1", Address("127.0.0.1", 9001)),
                ServerConf("s2", Address("127.0.0.1", 9002), weight=5),
                ServerConf("s3", Address("127.0.0.1", 9003), backup=True),
                ServerConf("s4", Address("127.0.0.1", 9004)),
            ],
        ),
        listen("db", servers=[ServerConf("s1", Address("127.0.0.1", 7777))]),  # moved
    )
    assert apply_servers_state(dump, new) == 3
    api, db = new
    assert api.server("s1").admin is AdminState.MAINT
    assert api.server("s2").admin is AdminState.DRAIN
    assert api.server("s2").weight == 5  # the new configured weight wins
    assert api.server("s3").weight == 9 and not api.server("s3").oper_up
    assert api.server("s4").admin is AdminState.READY  # new server: fresh state
    assert db.server("s1").admin is AdminState.READY  # address changed: not restored
    assert picks(api) == {"s4"}  # balancer rebuilt from the restored state
    assert apply_servers_state("garbage\n1 2 3", new) == 0
    assert apply_servers_state("", new) == 0
