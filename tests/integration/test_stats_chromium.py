"""The stats page in a real browser (Debian's headless Chromium): the page refreshes
itself, and a backend killed while the page is open turns DOWN through the real TCP
health checks. Screenshots are kept under tests/artifacts/ (gitignored).

Chromium runs with a virtual-time budget: it fast-forwards the page's timers but waits
for every fetch, so each refresh is a real round trip to our loop, which meanwhile runs
the health checks. The kill happens when the browser fetches its second refresh (the page
was rendered with the server UP); the DOM dumped at the end must show it DOWN.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest

from pylb.admin.http import start_stats_server
from pylb.config.model import Address, CheckParams, Health, ServerConf, StatsConf
from pylb.health.scheduler import HealthChecker
from pylb.proxy.backend import Backend
from tests.integration.tcp_helpers import BackendServer, Echo, wait_for
from tests.unit.admin_helpers import Provider, listen

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian 'chromium' is not installed (apt-get install chromium)"
)


async def chromium(tmp_path: Path, url: str, *args: str, timeout: float = 60.0) -> str:
    """Run headless Chromium once and return its stdout; killed on timeout or failure."""
    flags = [
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,  # type: ignore[arg-type]  # skipif above
        *flags,
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its helper processes die with the group below
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def srv_class(dom: str, name: str) -> str:
    marker = f'id="srv-api-{name}" class="'
    i = dom.index(marker) + len(marker)
    return dom[i : dom.index('"', i)]


async def test_page_watches_a_killed_server_turn_down(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    b1, b2 = await BackendServer(Echo).start(), await BackendServer(Echo).start()
    quick = CheckParams(inter=0.05, fastinter=0.05, downinter=0.05, rise=1, fall=1)
    conf = listen(
        "api",
        servers=[
            ServerConf("s1", b1.address),
            ServerConf("s2", b2.address),
        ],
        mode="tcp",
        health=Health(type="tcp", params=quick),
    )
    backend = Backend(conf)
    provider = Provider([backend])
    loop = asyncio.get_running_loop()
    checker = HealthChecker(backend)
    checker.start(loop)
    server = await start_stats_server(loop, StatsConf(bind=Address("127.0.0.1", 0)), provider)
    port = server.sockets[0].getsockname()[1]
    first_page: list[str] = []
    try:
        s1 = backend.server("s1")
        await wait_for(lambda: s1.check_status is not None, what="first check of s1")
        assert s1.oper_up

        await chromium(
            tmp_path,
            f"http://127.0.0.1:{port}/",
            "--window-size=1400,700",
            f"--screenshot={ARTIFACTS / 'stats-up.png'}",
        )

        down_at: list[int] = []

        def on_snapshot(n: int) -> None:
            if not s1.oper_up and not down_at:
                down_at.append(n)
            if n == 1:
                first_page.append("UP" if s1.oper_up else "DOWN")
            if n == 3:  # second refresh: kill the backend under the open page
                assert b1.server is not None
                b1.server.close()
                for p in b1.conns:
                    if p.transport is not None:
                        p.transport.abort()

        provider.calls = 0
        provider.on_snapshot = on_snapshot
        dom = await chromium(
            tmp_path,
            f"http://127.0.0.1:{port}/?refresh=100",
            "--virtual-time-budget=30000",  # ~300 refreshes, each a real round trip
            "--dump-dom",
        )
        provider.on_snapshot = None
        assert first_page == ["UP"]  # the page opened while s1 was up
        assert down_at, "s1 never went DOWN while the page was open"
        assert provider.calls > down_at[0]  # the page refreshed after s1 went DOWN
        assert not s1.oper_up
        assert srv_class(dom, "s1") == "down", dom[:3000]
        assert srv_class(dom, "s2") == "up"
        row = dom[dom.index('id="srv-api-s1"') :]
        row = row[: row.index("</tr>")]
        assert ">DOWN<" in row and "L4CON" in row  # status and last check result

        shot = ARTIFACTS / "stats-down.png"
        await chromium(
            tmp_path, f"http://127.0.0.1:{port}/", "--window-size=1400,700", f"--screenshot={shot}"
        )
        assert shot.stat().st_size > 1000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.close()
        await server.wait_closed()
        checker.stop()
        await checker.wait_stopped()
        await b1.close()
        await b2.close()
