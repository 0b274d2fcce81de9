"""Bodies are streamed, never buffered whole: a 64 MB chunked upload and a 256 MB download
pass through a proxy running in its own process whose RSS grows by less than 32 MB."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import pytest

from tests.integration.http_helpers import LOOP_FACTORIES, Client, HttpBackend, rss_kb

MB = 1024 * 1024
LIMIT_KB = 32 * 1024


async def _start_proxy(loop_kind: str, port: int) -> tuple[asyncio.subprocess.Process, int]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.http_helpers",
        loop_kind,
        str(port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=root,
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    return proc, int(line)


async def _stop_proxy(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("loop_kind", list(LOOP_FACTORIES))
def test_large_bodies_in_constant_memory(loop_kind: str) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        proc, port = await _start_proxy(loop_kind, b.port)
        try:
            c = await Client.connect(port)
            # warm up: imports, first buffers, pooled connection
            for _ in range(3):
                assert (await c.request("POST", "/echo", body=b"x" * 300_000)).status == 200
                r = await c.request("GET", "/bytes/1000000", None)
                assert r.body_len == 1000000
            base = rss_kb(proc.pid)
            peak = base

            # 64 MB chunked upload, written as it is produced (with drain)
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            block = os.urandom(64 * 1024)
            h = hashlib.sha256()
            for i in range(64 * MB // len(block)):
                c.send(b"%x\r\n" % len(block) + block + b"\r\n")
                h.update(block)
                await c.writer.drain()
                if i % 128 == 0:
                    peak = max(peak, rss_kb(proc.pid))
            c.send(b"0\r\n\r\n")
            r = await c.read_response()
            assert r.json()["body_len"] == 64 * MB
            assert r.json()["body_sha"] == h.hexdigest()
            peak = max(peak, rss_kb(proc.pid))

            # 256 MB download (Content-Length), read as it comes
            c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (256 * MB))
            samples = []
            r = await c.read_response(
                keep_body=False, progress=lambda: samples.append(rss_kb(proc.pid))
            )
            assert r.body_len == 256 * MB
            peak = max([peak, *samples, rss_kb(proc.pid)])
            assert len(samples) >= 8
            c.close()
            print(f"RSS base {base} KiB peak {peak} KiB")
            assert peak - base < LIMIT_KB, f"proxy RSS grew {(peak - base) // 1024} MB"
        finally:
            await _stop_proxy(proc)
            await b.stop()

    asyncio.run(asyncio.wait_for(main(), 120))
