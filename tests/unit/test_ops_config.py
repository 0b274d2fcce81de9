"""Issue 6 additions outside the admin package: `global.log.format` (loader and lint),
health counters resumed by a reload's new checker, the master's choice of where a
starting worker copies its server state from."""

from __future__ import annotations

import asyncio

from pylb.config.load import analyze_text
from pylb.config.model import Address, CheckParams, Health, Listen, ServerConf
from pylb.health.scheduler import HealthChecker
from pylb.proxy.backend import Backend
from pylb.supervisor import Master, Slot, control_path

BASE = """\
global:
  log: {target: %s, format: %s}
listen:
  web:
    bind: ["127.0.0.1:8080"]
    servers: [{name: a, address: "127.0.0.1:81"}]
"""


def test_log_format_is_validated_with_its_position():
    config, diags = analyze_text(BASE % ('"syslog:udp:127.0.0.1:514"', "rfc3164"), "p.yaml")
    assert config is not None and config.global_.log.format == "rfc3164"
    assert not [d for d in diags if d.severity == "error"]
    config, diags = analyze_text(BASE % ('"syslog:/dev/log"', "rfc5242"), "p.yaml")
    assert config is None
    (err,) = [d for d in diags if d.severity == "error"]
    assert "p.yaml:2:" in str(err) and "did you mean 'rfc5424'" in str(err)


def test_log_format_without_syslog_is_a_warning():
    config, diags = analyze_text(BASE % ("stdout", "rfc5424"), "p.yaml")
    assert config is not None
    assert [d.severity for d in diags] == ["warning"]
    assert "only applies to syslog targets" in str(diags[0])


def checked_backend(rise: int = 2, fall: int = 3) -> Backend:
    params = CheckParams(inter=60.0, rise=rise, fall=fall)
    servers = tuple(ServerConf(n, Address("127.0.0.1", p)) for n, p in (("a", 9), ("b", 19)))
    lst = Listen(
        name="web",
        binds=(Address("127.0.0.1", 0),),
        servers=servers,
        health=Health(type="tcp", params=params),
    )
    return Backend(lst)


async def test_checker_resumes_inherited_health_counters():
    backend = checked_backend()
    checker = HealthChecker(backend)
    checker.start(asyncio.get_running_loop(), {"a": 1, "zzz": 4})
    try:
        a, b = backend.servers
        assert a.check.state.health == 1 and not a.oper_up  # DOWN 1/2, as it was
        assert b.check.state.health == 2 and b.oper_up  # not inherited: init-state up
    finally:
        checker.stop()
        await checker.wait_stopped()


async def test_inherited_health_is_clamped_to_the_new_rise_fall():
    backend = checked_backend(rise=1, fall=1)
    checker = HealthChecker(backend)
    checker.start(asyncio.get_running_loop(), {"a": 9})
    try:
        assert backend.servers[0].check.state.health == 1
    finally:
        checker.stop()
        await checker.wait_stopped()


def test_state_sources_prefer_serving_siblings_then_the_same_old_slot(tmp_path):
    master = Master.__new__(Master)  # the attributes _state_sources reads, no signals
    master.rundir = str(tmp_path)
    old = [Slot("worker", i, pid=100 + i, generation=3, ready=True) for i in range(2)]
    older = Slot("worker", 1, pid=99, generation=2, ready=True)
    master.superseded = [(older, 30.0), (old[0], 30.0), (old[1], 30.0)]
    new = [Slot("worker", i, generation=4) for i in range(2)]
    master.slots = new
    # a reload: no new sibling serves yet -> old slot 1 first, then the rest, newest first
    assert master._state_sources(new[1]) == (
        control_path(str(tmp_path), 3, 1),
        control_path(str(tmp_path), 3, 0),
        control_path(str(tmp_path), 2, 1),
    )
    # a restart of slot 1 once slot 0 serves: the sibling comes first
    new[0].pid, new[0].ready = 200, True
    assert master._state_sources(new[1])[0] == control_path(str(tmp_path), 4, 0)
