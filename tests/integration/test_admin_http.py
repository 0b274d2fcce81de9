"""The stats HTTP server on real loopback sockets: a real HTTP proxy with a real backend
carries traffic, the stats server reports it on every endpoint, basic auth guards it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
from collections.abc import AsyncIterator

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from pylb.admin.http import start_stats_server
from pylb.admin.socket import start_admin_socket
from pylb.admin.stats import CSV_FIELDS, CSV_HEADER
from pylb.config.model import Address, StatsAuth, StatsConf
from tests.integration.http_helpers import Client, HttpBackend, listen_conf, proxy
from tests.unit.admin_helpers import Provider, backends


async def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    c = await Client.connect(port)
    try:
        return await c.request(method, path, headers=headers)
    finally:
        c.close()


@contextlib.asynccontextmanager
async def stats_server(provider, auth: StatsAuth | None = None) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    conf = StatsConf(bind=Address("127.0.0.1", 0), auth=auth)
    server = await start_stats_server(loop, conf, provider)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def setup():
    """A proxy ('web') in front of one real backend and one dead address, with a stats
    server over its Backend; one request has gone through."""
    be1 = await HttpBackend("s1").start()
    try:
        conf = listen_conf([be1.address, Address("127.0.0.1", 1)], weights=[1, 0])
        async with proxy(conf) as px:
            c = await Client.connect(px.port)
            resp = await c.request("GET", "/bytes/1000")
            assert resp.status == 200
            c.close()
            provider = Provider([px.backend], {"web": px.ctx})
            yield px, provider
    finally:
        await be1.stop()


async def test_endpoints(setup):
    _px, provider = setup
    async with stats_server(provider) as port:
        page = await get(port, "/")
        assert page.status == 200
        assert page.header("content-type") == "text/html; charset=utf-8"
        html = bytes(page.body).decode()
        assert "<title>pylb statistics</title>" in html and 'id="srv-web-s1"' in html

        body = await get(port, "/?part=body")
        assert b"<html" not in bytes(body.body) and b'id="srv-web-s1"' in bytes(body.body)

        resp = await get(port, "/stats.csv")
        assert resp.status == 200 and resp.header("content-type").startswith("text/csv")
        text = bytes(resp.body).decode()
        assert text.splitlines()[0] == CSV_HEADER  # exact header
        rows = [
            dict(zip(CSV_FIELDS, cells, strict=False))
            for cells in csv.reader(io.StringIO(text.split("\n", 1)[1]))
        ]
        by = {r["svname"]: r for r in rows}
        assert set(by) == {"FRONTEND", "s1", "s2", "BACKEND"}
        assert by["s1"]["stot"] == "1" and int(by["s1"]["bout"]) > 1000
        assert by["FRONTEND"]["stot"] == "1"

        resp = await get(port, "/stats.json")
        assert resp.header("content-type") == "application/json"
        doc = resp.json()
        (lst,) = doc["listeners"]
        assert lst["name"] == "web"
        assert {s["svname"]: s["stot"] for s in lst["servers"]} == {"s1": 1, "s2": 0}

        resp = await get(port, "/metrics")
        assert resp.header("content-type").startswith("text/plain; version=0.0.4")
        fams = {f.name: f for f in text_string_to_metric_families(bytes(resp.body).decode())}
        samples = {
            (s.name, s.labels.get("server")): s.value for s in fams["pylb_server_sessions"].samples
        }
        assert samples[("pylb_server_sessions_total", "s1")] == 1
        assert "pylb_server_bytes_out" in fams and "pylb_backend_up" in fams

        assert (await get(port, "/nope")).status == 404
        head = await get(port, "/stats.csv", method="HEAD")
        assert head.status == 200 and int(head.header("content-length")) > len(CSV_HEADER)
        assert (await get(port, "/", method="POST")).status == 405


async def test_state_change_shows_at_next_request(setup):
    px, provider = setup
    async with stats_server(provider) as port:
        doc = (await get(port, "/stats.json")).json()
        assert doc["listeners"][0]["servers"][0]["status"] == "no check"
        s1 = px.backend.server("s1")
        s1.oper_up = False
        px.backend.server_changed(s1)
        doc = (await get(port, "/stats.json")).json()
        assert doc["listeners"][0]["servers"][0]["status"] == "DOWN"
        assert doc["listeners"][0]["backend"]["status"] == "DOWN"


@pytest.mark.parametrize("from_file", [False, True])
async def test_basic_auth(tmp_path, from_file):
    provider = Provider([])
    if from_file:
        pw = tmp_path / "stats.pw"
        pw.write_text("s3cret\n")
        auth = StatsAuth(user="admin", password_file=str(pw))
    else:
        auth = StatsAuth(user="admin", password="s3cret")

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async with stats_server(provider, auth) as port:
        resp = await get(port, "/stats.csv")
        assert resp.status == 401
        assert resp.header("www-authenticate").startswith('Basic realm="pylb statistics"')
        assert provider.calls == 0  # nothing computed for an unauthenticated client
        for hdrs in (
            basic("admin", "wrong"),
            basic("root", "s3cret"),
            basic("admin", "s3cret\n"),
            {"Authorization": "Basic !!!not-base64"},
            {"Authorization": "Bearer s3cret"},
        ):
            assert (await get(port, "/metrics", hdrs)).status == 401
        ok = await get(port, "/stats.csv", basic("admin", "s3cret"))
        assert ok.status == 200 and bytes(ok.body).decode().startswith(CSV_HEADER)


async def test_bad_requests_are_answered_and_closed():
    async with stats_server(Provider([])) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 5)
        assert data.startswith(b"HTTP/1.1 400 ")
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 5)
        assert data.startswith(b"HTTP/1.1 431 ")
        w.close()


async def test_json_matches_csv(setup):
    _, provider = setup
    async with stats_server(provider) as port:
        doc = (await get(port, "/stats.json")).json()
        text = bytes((await get(port, "/stats.csv")).body).decode()
    rows = list(csv.reader(io.StringIO(text.split("\n", 1)[1])))
    s1 = dict(zip(CSV_FIELDS, rows[1], strict=False))
    js1 = doc["listeners"][0]["servers"][0]
    assert str(js1["stot"]) == s1["stot"] and str(js1["bout"]) == s1["bout"]
    json.dumps(doc)


def test_stats_and_admin_socket_on_uvloop(tmp_path):
    """The worker runs uvloop: serve both endpoints on it (httptools Protocol, unix server
    from a pre-bound socket) and talk to them."""
    prov = Provider(backends())
    path = str(tmp_path / "admin.sock")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with stats_server(prov) as port:
            resp = await get(port, "/stats.csv")
            assert resp.status == 200 and bytes(resp.body).decode().startswith(CSV_HEADER)
            admin = await start_admin_socket(loop, path, prov)
            try:
                r, w = await asyncio.open_unix_connection(path)
                w.write(b"disable server api/s1\n")
                assert await asyncio.wait_for(r.read(), 5) == b"\n"
                w.close()
            finally:
                admin.close()
                await admin.wait_closed()
            doc = (await get(port, "/stats.json")).json()
            assert doc["listeners"][0]["servers"][0]["status"] == "MAINT"

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 30))
