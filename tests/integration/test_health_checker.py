"""HealthChecker on a real Backend with tiny loopback backends (asyncio and uvloop).

Timing assertions are bounds derived from the configuration (fall x inter + slack), never
fixed sleeps: the tests poll in-process state with a deadline.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from pylb.config.model import Address, CheckParams, Health, Listen, ServerConf
from pylb.health.passive import observe
from pylb.health.scheduler import HealthChecker, check_address, check_timeout
from pylb.health.summary import critical_down, health_summary
from pylb.health.types import CheckStatus, InitState, Observation
from pylb.proxy.backend import AdminState, Backend
from tests.integration.health_helpers import TinyHttp, closed_port, wait_until
from tests.integration.health_helpers import run_fixture as run_fixture  # `run`, both loops

PARAMS = CheckParams(inter=0.05, fastinter=0.03, downinter=0.1, rise=2, fall=3)
SLACK = 1.0  # scheduling noise on a loaded CI machine; the bound is still far below 1 inter of prod


def listen_for(
    servers: list[tuple[str, Address, bool]],
    health: Health | None,
    critical: bool = False,
) -> Listen:
    return Listen(
        name="api",
        binds=(Address("127.0.0.1", 0),),
        servers=tuple(ServerConf(name=n, address=a, backup=b) for n, a, b in servers),
        health=health,
        critical=critical,
    )


class Transitions(logging.Handler):
    """Records pylb.health lines with a snapshot taken at the moment of logging."""

    def __init__(self, snapshot) -> None:
        super().__init__(logging.DEBUG)
        self.snapshot = snapshot
        self.lines: list[tuple[int, str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage(), self.snapshot()))

    def messages(self, contains: str = "") -> list[str]:
        return [m for _, m, _ in self.lines if contains in m]


@pytest.fixture
def health_log():
    logger = logging.getLogger("pylb.health")
    handlers: list[Transitions] = []
    old_level = logger.level

    def attach(snapshot=lambda: None) -> Transitions:
        h = Transitions(snapshot)
        logger.addHandler(h)
        handlers.append(h)
        return h

    logger.setLevel(logging.DEBUG)
    try:
        yield attach
    finally:
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(old_level)


async def started(*backends: TinyHttp) -> list[TinyHttp]:
    return [await b.start() for b in backends]


def test_kill_marks_down_within_fall_inter_and_restart_brings_up_after_rise(
    run, health_log
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        b1, b2 = await started(TinyHttp(), TinyHttp())
        backend = Backend(
            listen_for(
                [("ctl01", b1.address, False), ("ctl02", b2.address, False)],
                Health(type="http", path="/healthz", params=PARAMS),
            )
        )
        s1, s2 = backend.servers
        checker = HealthChecker(backend)
        log = health_log(lambda: (len(b2.requests), checker.checks[1].state.failed_checks))
        checker.start(loop)
        try:
            # both confirmed up by their first checks
            await wait_until(lambda: s1.check_status is CheckStatus.L7OK, 2.0, "first check")
            await wait_until(lambda: s2.check_status is CheckStatus.L7OK, 2.0, "first check")
            assert s1.oper_up and s2.oper_up and s2.check_code == 200
            await wait_until(lambda: checker.checks[1].state.health == 4, 2.0, "fully up")

            await b2.stop()  # "killed": connects are refused
            took = await wait_until(lambda: not s2.oper_up, PARAMS.fall * PARAMS.inter + SLACK)
            assert took < PARAMS.fall * PARAMS.inter + SLACK
            assert backend.pick() is s1
            down = log.messages("is DOWN")
            assert down == [
                'Server api/ctl02 is DOWN, reason: Layer4 connection problem, info: "Connection '
                'refused", check duration: '
                + down[0].split("check duration: ")[1].split("ms")[0]
                + "ms. 1 active and 0 backup servers left. 0 sessions active, 0 requeued, "
                "0 remaining in queue."
            ]
            level, _, (_, failed) = next(x for x in log.lines if "is DOWN" in x[1])
            assert level == logging.CRITICAL  # HAProxy logs a server DOWN at alert
            assert failed == PARAMS.fall  # exactly `fall` failed checks, not fewer
            assert s2.check_status is CheckStatus.L4CON and s2.check_desc == "Connection refused"
            # the failures before the flip, as HAProxy's log-health-checks lines (debug)
            progress = [
                m.split(", check duration")[0] + " " + m.split("ms, ")[1]
                for m in log.messages("Health check for server api/ctl02 failed")
            ]
            assert progress == [
                "Health check for server api/ctl02 failed, reason: Layer4 connection problem, "
                'info: "Connection refused" status: 2/3 UP.',
                "Health check for server api/ctl02 failed, reason: Layer4 connection problem, "
                'info: "Connection refused" status: 1/3 UP.',
            ]
            assert s2.check_duration is not None

            b2.requests.clear()
            await b2.start()  # same port
            took = await wait_until(
                lambda: s2.oper_up, PARAMS.downinter + PARAMS.rise * PARAMS.fastinter + SLACK
            )
            up = [x for x in log.lines if "is UP" in x[1]]
            assert len(up) == 1
            level, msg, (requests_at_up, _) = up[0]
            assert level == 25  # notice
            assert requests_at_up == PARAMS.rise  # exactly `rise` passed checks
            assert msg.startswith(
                "Server api/ctl02 is UP, reason: Layer7 check passed, code: 200, check duration: "
            )
            assert msg.endswith(
                "ms. 2 active and 0 backup servers online. 0 sessions requeued, 0 total in queue."
            )
            assert b2.requests[0].startswith(b"GET /healthz HTTP/1.0\r\n")
            rising = [
                m
                for m in log.messages("Health check for server api/ctl02 succeeded")
                if m.endswith(" DOWN.")
            ]
            assert len(rising) == PARAMS.rise - 1 and rising[0].endswith("status: 1/2 DOWN.")
            assert not log.messages("no server available")
        finally:
            checker.stop()
            await checker.wait_stopped()
            for b in (b1, b2):
                await b.stop()

    run(main())


def test_backup_counts_and_no_server_available(run, health_log) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a1, a2, bk = await started(TinyHttp(), TinyHttp(), TinyHttp())
        backend = Backend(
            listen_for(
                [("a1", a1.address, False), ("a2", a2.address, False), ("bk", bk.address, True)],
                Health(type="tcp", params=PARAMS),
                critical=True,
            )
        )
        sa1, sa2, sbk = backend.servers
        checker = HealthChecker(backend)
        log = health_log()
        checker.start(loop)
        bound = PARAMS.fall * PARAMS.inter + SLACK
        try:
            await wait_until(lambda: all(c.state.health == 4 for c in checker.checks), 2.0)
            assert backend.pick() in (sa1, sa2)
            await a1.stop()
            await wait_until(lambda: not sa1.oper_up, bound)
            await a2.stop()
            await wait_until(lambda: not sa2.oper_up, bound)
            assert backend.pick() is sbk  # backup serves only now
            summary = health_summary({"api": backend})["api"]
            assert (summary.active_up, summary.backup_up, summary.using_backups) == (0, 1, True)
            assert not summary.critical_down
            await bk.stop()
            await wait_until(lambda: not sbk.oper_up, bound)
            assert backend.pick() is None
            assert critical_down(health_summary([backend])) == ["api"]

            down = log.messages("is DOWN")
            assert [m.split(" is DOWN")[0] for m in down] == [
                "Server api/a1",
                "Server api/a2",
                "Backup Server api/bk",
            ]
            assert [m.split("ms. ")[1].split(" left.")[0] for m in down] == [
                "1 active and 1 backup servers",
                "0 active and 1 backup servers",
                "0 active and 0 backup servers",
            ]
            alerts = [(lv, m) for lv, m, _ in log.lines if "no server available" in m]
            assert alerts == [(logging.CRITICAL, "backend api has no server available!")]

            await a1.start()
            await wait_until(lambda: sa1.oper_up, PARAMS.downinter + 2 * PARAMS.fastinter + SLACK)
            assert backend.pick() is sa1  # the backup stops taking traffic
            assert "1 active and 0 backup servers online" in log.messages("is UP")[0]
            assert not critical_down(health_summary([backend]))
        finally:
            checker.stop()
            await checker.wait_stopped()
            for b in (a1, a2, bk):
                await b.stop()

    run(main())


def test_http_503_takes_server_out_while_tcp_connects(run, health_log) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ok, sick = await started(TinyHttp(), TinyHttp(status=(503, "Service Unavailable")))
        backend = Backend(
            listen_for(
                [("ok", ok.address, False), ("sick", sick.address, False)],
                Health(type="http", params=PARAMS),
            )
        )
        checker = HealthChecker(backend)
        log = health_log()
        checker.start(loop)
        try:
            # default init state: up, and the first failed check takes it down
            await wait_until(lambda: not backend.servers[1].oper_up, PARAMS.inter + SLACK)
            (msg,) = log.messages("is DOWN")
            assert msg.startswith(
                "Server api/sick is DOWN, reason: Layer7 wrong status, code: 503, "
                'info: "Service Unavailable", check duration: '
            )
            assert backend.servers[0].oper_up
        finally:
            checker.stop()
            await checker.wait_stopped()
            for b in (ok, sick):
                await b.stop()

    run(main())


def test_passive_observation_takes_server_out_before_next_check(run, health_log) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        b1, b2 = await started(TinyHttp(), TinyHttp())
        slow = CheckParams(inter=30.0, fastinter=0.05, downinter=30.0, rise=2, fall=3)
        backend = Backend(
            listen_for(
                [("ctl01", b1.address, False), ("ctl02", b2.address, False)],
                Health(type="tcp", params=slow),
            )
        )
        s1, s2 = backend.servers
        # fully up from the start: ctl02 has not been checked yet, and with the default
        # init state its first failure (active or observed) would already take it down
        checker = HealthChecker(backend, rng=lambda: 0.5, init=InitState.FULLY_UP)
        log = health_log()
        checker.start(loop)
        try:
            # server 0 is checked at once; server 1's first check is half an inter away
            await wait_until(lambda: s1.check_status is CheckStatus.L4OK, 2.0)
            sc2 = checker.checks[1]
            first_due = sc2.state.due
            assert first_due - loop.time() > 10
            await b2.stop()
            observe(s2, Observation.CONNECT_OK)  # success: nothing
            for _ in range(2):
                observe(s2, Observation.CONNECT_REFUSED, "Connection refused")
            assert s2.oper_up  # 2 of fall=3: one more error takes it down
            assert sc2.state.due < loop.time() + 0.1  # the next check was brought forward
            observe(s2, Observation.CONNECT_REFUSED, "Connection refused")
            assert not s2.oper_up  # at once, no active check in between
            (msg,) = log.messages("is DOWN")
            assert msg == (
                "Server api/ctl02 is DOWN, reason: Health analyze, info: "
                '"Detected 1 consecutive errors, last one was: L4 unsuccessful connection '
                '(Connection refused)". 1 active and 0 backup servers left. '
                "0 sessions active, 0 requeued, 0 remaining in queue."
            )
            assert s2.check_status is CheckStatus.HANA
            # the expedited active check runs and confirms (L4CON) long before 30 s
            await wait_until(lambda: s2.check_status is CheckStatus.L4CON, 2.0)
        finally:
            checker.stop()
            await checker.wait_stopped()
            for b in (b1, b2):
                await b.stop()

    run(main())


def test_check_port_and_address_overrides(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        live = await TinyHttp().start()
        dead = closed_port()
        conf = Listen(
            name="api",
            binds=(Address("127.0.0.1", 0),),
            servers=(
                ServerConf(name="p", address=dead, check_port=live.port),
                ServerConf(
                    name="a",
                    address=Address("127.0.0.2", live.port),
                    check_address="127.0.0.1",
                ),
                ServerConf(name="nocheck", address=dead, check=False),
            ),
            health=Health(type="tcp", params=PARAMS),
        )
        backend = Backend(conf)
        assert check_address(backend.servers[0]) == live.address
        assert check_address(backend.servers[1]) == live.address
        checker = HealthChecker(backend)
        assert [c.server.name for c in checker.checks] == ["p", "a"]
        checker.start(loop)
        try:
            await wait_until(
                lambda: all(c.state.health == 4 for c in checker.checks), 2.0, "overrides"
            )
            assert all(s.oper_up for s in backend.servers)
            assert backend.servers[2].check is None and backend.servers[2].check_status is None
        finally:
            checker.stop()
            await checker.wait_stopped()
            await live.stop()

    run(main())


def test_stop_cancels_probes_in_flight(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        silent = await TinyHttp(mode="silent").start()
        backend = Backend(
            listen_for(
                [("frozen", silent.address, False)],
                Health(type="http", params=CheckParams(inter=5.0, timeout=5.0)),
            )
        )
        checker = HealthChecker(backend)
        checker.start(loop)
        server = backend.servers[0]
        try:
            assert server.check is checker.checks[0]
            await wait_until(lambda: len(silent.requests) == 1, 2.0, "probe sent")
            assert checker.checks[0].running
            checker.stop()
            checker.stop()  # idempotent
            await checker.wait_stopped()
            assert not checker.checks[0].running and server.check is None
            await wait_until(lambda: not silent.conns, 2.0, "probe connection closed")
            observe(server, Observation.CONNECT_REFUSED)  # after stop: ignored
            assert server.oper_up and server.check_status is None
        finally:
            checker.stop()
            await checker.wait_stopped()
            await silent.stop()

    run(main())


def test_maintenance_pauses_checks(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        b = await TinyHttp().start()
        conf = Listen(
            name="api",
            binds=(Address("127.0.0.1", 0),),
            servers=(
                ServerConf(name="m", address=b.address, disabled=True),
                ServerConf(name="r", address=b.address),
            ),
            health=Health(type="http", params=PARAMS),
        )
        backend = Backend(conf)
        checker = HealthChecker(backend)
        checker.start(loop)
        try:
            m, r = backend.servers
            assert m.admin is AdminState.MAINT
            await wait_until(lambda: r.check_status is not None and len(b.requests) >= 3, 2.0)
            assert m.check_status is None  # never probed while in maintenance
            m.admin = AdminState.READY
            backend.server_changed(m)
            await wait_until(lambda: m.check_status is CheckStatus.L7OK, PARAMS.inter + SLACK)
        finally:
            checker.stop()
            await checker.wait_stopped()
            await b.stop()

    run(main())


def test_no_health_block_means_no_checks(run) -> None:
    async def main() -> None:
        backend = Backend(listen_for([("x", closed_port(), False)], None))
        checker = HealthChecker(backend)
        assert not checker.enabled
        checker.start(asyncio.get_running_loop())
        checker.stop()
        await checker.wait_stopped()
        assert backend.servers[0].oper_up

    run(main())


def test_check_timeout_default() -> None:
    assert check_timeout(Health(params=CheckParams(inter=2.0)), 5.0) == 2.0
    assert check_timeout(Health(params=CheckParams(inter=2.0)), 1.0) == 1.0
    assert check_timeout(Health(params=CheckParams(inter=2.0, timeout=0.3)), 1.0) == 0.3


def test_server_check_timing_overrides(run) -> None:
    """A server with its own `fall: 1` goes down after one failed check while its sibling,
    inheriting `fall: 3`, needs three: per-server parameters reach the state machine."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        b1, b2 = await started(TinyHttp(), TinyHttp())
        conf = Listen(
            name="api",
            binds=(Address("127.0.0.1", 0),),
            servers=(
                ServerConf(name="s1", address=b1.address),
                ServerConf(name="s2", address=b2.address, fall=1, inter=0.04),
            ),
            health=Health(type="tcp", params=PARAMS),
        )
        backend = Backend(conf)
        s1, s2 = backend.servers
        checker = HealthChecker(backend)
        c1, c2 = checker.checks
        assert (c1.state.fall, c2.state.fall) == (3, 1)
        assert (c1.timeout, c2.timeout) == (PARAMS.inter, 0.04)  # min(inter, timeout.connect)
        checker.start(loop)
        try:
            await wait_until(lambda: c1.state.health == 4 and c2.state.health == 2, 2.0, "up")
            await b1.stop()
            await b2.stop()
            await wait_until(lambda: not s2.oper_up, 1 * 0.04 + SLACK, "s2 down")
            assert c2.state.failed_checks == 1
            await wait_until(lambda: not s1.oper_up, PARAMS.fall * PARAMS.inter + SLACK)
            assert c1.state.failed_checks == 3
        finally:
            checker.stop()
            await checker.wait_stopped()

    run(main())
