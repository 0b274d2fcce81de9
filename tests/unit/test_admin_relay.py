"""pylb.admin.relay: `show stat` summed over workers, health counters carried over a
reload, and the relay of runtime commands to peer workers over real unix sockets."""

from __future__ import annotations

import asyncio

from pylb.admin.commands import execute, show_servers_state
from pylb.admin.relay import (
    Relay,
    aggregate_csv,
    aggregate_metrics,
    fetch_servers_state,
    inherited_health,
    local_handler,
)
from pylb.admin.socket import start_admin_socket
from pylb.admin.stats import CSV_FIELDS, Snapshot, metrics_text, to_csv
from pylb.config.model import Address, ServerConf
from pylb.proxy.backend import AdminState
from tests.unit.admin_helpers import (
    CheckHandleStub,
    CheckStateStub,
    Provider,
    backends,
    health,
    listen,
)


def rows_of(text: str) -> dict[str, dict[str, str]]:
    out = {}
    for line in text.splitlines()[1:]:
        if line:
            cells = line.split(",")
            out[cells[1]] = dict(zip(CSV_FIELDS, cells, strict=False))
    return out


def worker_csv(stot: int, scur: int, status_down: bool = False) -> tuple[str, list]:
    bes = backends()
    s1 = bes[0].servers[0]
    s1.total_conns = stot
    s1.cur_conns = scur
    if status_down:
        s1.admin = AdminState.MAINT
    return to_csv(Snapshot(backends=bes)), bes


def test_aggregate_sums_counters_and_keeps_the_first_workers_status():
    a, _ = worker_csv(stot=5, scur=1, status_down=True)
    b, _ = worker_csv(stot=7, scur=2)
    out = aggregate_csv([a, b])
    assert out.splitlines()[0] == a.splitlines()[0]  # HAProxy's header, unchanged
    s1 = rows_of(out)["s1"]
    assert (s1["stot"], s1["scur"]) == ("12", "3")
    assert s1["status"] == "MAINT"  # state fields: the first (slot 0's)
    assert all(line.endswith(",") for line in out.splitlines()[1:])
    assert aggregate_csv([a]) == a


def test_aggregate_ignores_garbage_and_unknown_rows():
    a, _ = worker_csv(stot=1, scur=0)
    out = aggregate_csv([a, "not,a,csv\n", "api,ghost," + "1," * 99 + "\n"])
    assert rows_of(out)["s1"]["stot"] == "1"
    assert "ghost" not in out


def test_inherited_health_only_for_unchanged_checked_servers():
    lst = listen(health=health())
    old = backends(lst)
    s1, s2, _ = old[0].servers
    s1.check = CheckHandleStub(CheckStateStub(health=1))  # DOWN 1/2
    s2.check = None  # not checked in the old worker
    text = show_servers_state(Snapshot(backends=old), None)
    moved = listen(
        health=health(),
        servers=(
            ServerConf("s1", Address("127.0.0.1", 9001)),
            ServerConf("s2", Address("127.0.0.1", 9002)),
            ServerConf("s3", Address("127.0.0.1", 9999)),  # address changed: fresh
        ),
    )
    assert inherited_health(text, backends(moved)) == {"api": {"s1": 1}}


async def test_relay_applies_changes_everywhere_and_sums_show_stat(tmp_path):
    loop = asyncio.get_running_loop()
    local, peer = Provider(backends()), Provider(backends())
    local.backends[0].servers[0].total_conns = 3
    peer.backends[0].servers[0].total_conns = 4
    path = str(tmp_path / "peer.sock")
    server = await start_admin_socket(loop, path, peer, quiet=True)
    try:
        relay = Relay(local, lambda: [path])
        assert await relay.handle("disable server api/s2\n") == "\n"
        assert local.backends[0].servers[1].admin is AdminState.MAINT
        assert peer.backends[0].servers[1].admin is AdminState.MAINT
        answer = await relay.handle("show stat")
        assert rows_of(answer)["s1"]["stot"] == "7"
        assert rows_of(await relay.stat_csv())["s1"]["stot"] == "7"
        # local-only commands are answered by this worker alone
        assert await relay.handle("show servers state api") == execute(
            "show servers state api", local
        )
        got = await fetch_servers_state([str(tmp_path / "missing.sock"), path])
        assert got is not None and got[1] == path and got[0].startswith("1\n")
    finally:
        server.close()
    # a dead peer: the local answer still comes, the peer is skipped
    assert await relay.handle("enable server api/s2") == "\n"
    assert local.backends[0].servers[1].admin is AdminState.READY
    assert await fetch_servers_state([path]) is None


def test_aggregate_metrics_sums_counters_and_sessions_not_states():
    a, b = Provider(backends()), Provider(backends())
    sa, sb = a.backends[0].servers[0], b.backends[0].servers[0]
    sa.total_conns, sb.total_conns = 3, 4
    sa.cur_conns, sb.cur_conns = 1, 2
    sb.admin = AdminState.MAINT  # a state: the first text's value is kept
    out = aggregate_metrics([metrics_text(a).decode(), metrics_text(b).decode()]).decode()
    assert 'pylb_server_sessions_total{proxy="api",server="s1"} 7.0' in out
    assert 'pylb_server_current_sessions{proxy="api",server="s1"} 3.0' in out
    assert 'pylb_server_up{proxy="api",server="s1"} 1.0' in out
    assert "# TYPE pylb_server_sessions_total counter" in out
    # garbage from a peer is left out
    text = metrics_text(a)
    assert aggregate_metrics([text.decode(), "{{{"]) == text


async def test_local_handler_serves_metrics_and_the_runtime_api():
    p = Provider(backends())
    assert (await local_handler(p, "show metrics")).startswith("# HELP")
    assert await local_handler(p, "help") == execute("help", p)
