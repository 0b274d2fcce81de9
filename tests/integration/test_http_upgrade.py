"""Expect: 100-continue and Upgrade (WebSocket) through the HTTP proxy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil

import pytest

from tests.integration.http_helpers import (
    WS_GUID,
    Client,
    HttpBackend,
    listen_conf,
    proxy,
    run_fixture,  # noqa: F401  # provides the loop-parametrised `run` fixture
    wait_for,
    ws_frame,
    ws_read,
)


def test_expect_100_continue_relayed(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                body = os.urandom(200_000)
                c.send(
                    b"PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body)
                )
                interim = await c._read_one(False, True)
                assert interim.status == 100  # the server's 100, relayed before any body
                c.send(body)
                r = await c.read_response()
                doc = r.json()
                assert doc["body_len"] == len(body)
                assert doc["body_sha"] == hashlib.sha256(body).hexdigest()
                assert ["Expect", "100-continue"] in doc["headers"]
                r = await c.request("GET", "/echo")  # still in sync, kept alive
                assert r.status == 200
                c.close()
        finally:
            await b.stop()

    run(main())


def test_expect_rejected_closes_client(run) -> None:
    """The server answers 417 without 100: the client may never send its body, so the
    proxy cannot know where the next request starts: it closes after the response."""

    async def main() -> None:
        b = await HttpBackend(expect_mode="reject").start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                c.send(
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 10\r\n\r\n"
                )
                r = await c.read_response()
                assert r.status == 417
                assert r.header("connection") == "close"
                assert await c.closed()
        finally:
            await b.stop()

    run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_large_post_with_expect(run, tmp_path) -> None:
    """curl sends `Expect: 100-continue` for bodies over 1 MB and waits for the 100."""

    async def main() -> None:
        b = await HttpBackend().start()
        data = tmp_path / "body"
        payload = os.urandom(3_000_000)
        data.write_bytes(payload)
        try:
            async with proxy(listen_conf([b.address])) as px:
                proc = await asyncio.create_subprocess_exec(
                    "curl",
                    "-sS",
                    "--noproxy",
                    "*",
                    "--expect100-timeout",
                    "20",
                    "-H",
                    "Content-Type: application/octet-stream",
                    "--data-binary",
                    f"@{data}",
                    f"http://127.0.0.1:{px.port}/echo",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await proc.communicate()
                assert proc.returncode == 0, err
                doc = json.loads(out)
                assert doc["body_len"] == len(payload)
                assert doc["body_sha"] == hashlib.sha256(payload).hexdigest()
                assert ["Expect", "100-continue"] in doc["headers"]
        finally:
            await b.stop()

    run(main())


def test_websocket_echo_through_tunnel(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                key = base64.b64encode(os.urandom(16))
                c.send(
                    b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
                )
                r = await c.read_response()
                assert r.status == 101
                assert r.header("upgrade") == "websocket"
                assert r.header("connection").lower() == "upgrade"
                want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
                assert r.header("sec-websocket-accept") == want
                reader = c.reader
                if c._buf:  # bytes after the 101 head (none expected)
                    reader.feed_data(c._buf)
                for msg in (b"hello", b"x" * 70000, os.urandom(300)):
                    c.send(ws_frame(msg, opcode=2))
                    op, payload = await ws_read(reader)
                    assert payload == msg
                c.send(ws_frame(b"", opcode=8))
                op, _ = await ws_read(reader)
                assert op == 8
                assert await c.closed()  # the server's close reaches the client as EOF
                c.writer.write_eof()  # and the client's shutdown closes the tunnel
                await wait_for(lambda: px.ctx.feconn == 0, what="tunnel closed")
                assert px.backend.servers[0].cur_conns == 0
                assert px.log.records[-1].status == 101
        finally:
            await b.stop()

    run(main())


def test_declined_upgrade_is_plain_http(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                r = await c.request("GET", "/echo", {"Connection": "Upgrade", "Upgrade": "h2c"})
                assert r.status == 200
                hdrs = r.json()["headers"]
                assert ["Upgrade", "h2c"] in hdrs
                assert r.header("connection") == "close"
                assert await c.closed()
        finally:
            await b.stop()

    run(main())
