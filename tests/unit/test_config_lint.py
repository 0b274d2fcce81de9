"""The semantic lint as a pure function over the model (no YAML, no positions)."""

from __future__ import annotations

import textwrap

import pytest

from pylb.config.errors import Diagnostic
from pylb.config.lint import lint
from pylb.config.load import analyze_text
from pylb.config.model import (
    Address,
    CheckParams,
    Config,
    GlobalConf,
    Health,
    Listen,
    ServerConf,
    StatsConf,
    Timeouts,
)


def srv(name: str = "a", port: int = 81, **kw: object) -> ServerConf:
    return ServerConf(name=name, address=Address("127.0.0.1", port), **kw)  # type: ignore[arg-type]


def lst(
    name: str = "web", port: int = 80, servers: tuple[ServerConf, ...] | None = None, **kw: object
) -> Listen:
    return Listen(
        name=name,
        binds=(Address("127.0.0.1", port),),
        servers=(srv(),) if servers is None else servers,
        **kw,  # type: ignore[arg-type]
    )


def run(*listens: Listen, global_: GlobalConf | None = None) -> list[tuple[str, str, str]]:
    cfg = Config(global_=global_ or GlobalConf(), listens=listens, source="m")
    return [(d.severity, d.path, d.message) for d in lint(cfg)]


def test_clean_model_has_no_findings() -> None:
    assert run(lst(), lst("api", 90, mode="tcp", log_format="tcplog")) == []


def test_positions_unknown_without_a_source_map() -> None:
    cfg = Config(global_=GlobalConf(workers=0), listens=(lst(),), source="m")
    (d,) = lint(cfg)
    assert (d.file, d.line, d.col) == ("m", 0, 0)
    assert str(d) == "m: error: global.workers: must be at least 1, got 0"


def test_global_ranges() -> None:
    assert run(lst(), global_=GlobalConf(workers=0, maxconn=0)) == [
        ("error", "global.workers", "must be at least 1, got 0"),
        ("error", "global.maxconn", "must be at least 1, got 0"),
    ]


def test_duplicate_listener_and_bind() -> None:
    found = run(lst("web", 80), lst("web", 81), lst("api", 80))
    assert ("error", "listen.web", "duplicate listener name 'web'") in found
    assert (
        "error",
        "listen.api.bind[0]",
        "127.0.0.1:80 is already bound by listen.web.bind[0]",
    ) in found


def test_stats_bind_conflicts_with_a_listener() -> None:
    g = GlobalConf(stats=StatsConf(bind=Address("127.0.0.1", 80)))
    assert run(lst(), global_=g) == [
        ("error", "listen.web.bind[0]", "127.0.0.1:80 is already bound by global.stats.bind")
    ]


def test_wildcard_overlap_is_a_warning() -> None:
    wild = Listen(name="all", binds=(Address("0.0.0.0", 80),), servers=(srv(),))
    v6 = Listen(name="v6", binds=(Address("::1", 80),), servers=(srv(),))
    found = run(wild, lst(), v6)
    assert found == [
        (
            "warning",
            "listen.web.bind[0]",
            "127.0.0.1:80 overlaps the wildcard bind listen.all.bind[0]",
        )
    ]


@pytest.mark.parametrize("weight", [-1, 257, 300])
def test_weight_range(weight: int) -> None:
    assert run(lst(servers=(srv(weight=weight),))) == [
        ("error", "listen.web.servers[0].weight", f"weight {weight} is out of range 0..256")
    ]


@pytest.mark.parametrize("weight", [0, 1, 256])
def test_weight_bounds_accepted(weight: int) -> None:
    both = (srv(weight=weight), srv("b", 82))
    assert run(lst(servers=both)) == []


def test_server_rules() -> None:
    found = run(
        lst(
            servers=(
                srv("a", maxconn=0, check_port=70000, priority=-1),
                srv("a", 81),
                srv("bad/name", 83),
            )
        )
    )
    assert found == [
        ("error", "listen.web.servers[0].maxconn", "must be at least 1, got 0"),
        ("error", "listen.web.servers[0].check_port", "port 70000 is out of range 1..65535"),
        ("error", "listen.web.servers[0].priority", "must be 0 or more, got -1"),
        (
            "warning",
            "listen.web.servers[0].priority",
            "priority is only used by balance writer-pin",
        ),
        (
            "warning",
            "listen.web.servers[0]",
            "check_port/check_address have no effect: the listener has no health",
        ),
        (
            "error",
            "listen.web.servers[1].name",
            "duplicate server name 'a' in listen web (first at listen.web.servers[0])",
        ),
        ("warning", "listen.web.servers[1].address", "same address as listen.web.servers[0]"),
        (
            "error",
            "listen.web.servers[2].name",
            "server name 'bad/name': use 1-64 letters, digits, '_', '.', ':' or '-'",
        ),
    ]


def test_no_servers_and_no_binds() -> None:
    empty = Listen(name="web", binds=(), servers=())
    assert run(empty) == [
        ("error", "listen.web", 'no bind address: add e.g. bind: ["192.0.2.10:80"]'),
        ("error", "listen.web.servers", "no servers: add at least one under servers:"),
    ]


def test_nothing_to_do() -> None:
    assert run() == [("error", "listen", "no listen blocks and no vrrp: nothing to do")]
    cfg = Config(global_=GlobalConf(), listens=(), vrrp={"instances": []}, source="m")
    assert lint(cfg) == []


def test_listen_scalar_rules() -> None:
    found = run(
        lst(retries=-1, maxconn=0),
        lst("b", 90, maxconn=30000),
        lst("c", 91, mode="tcp", log_format="tcplog", forwardfor=True, failback=True),
    )
    assert found == [
        ("error", "listen.web.retries", "must be 0 or more, got -1"),
        ("error", "listen.web.maxconn", "must be at least 1, got 0"),
        (
            "warning",
            "listen.b.maxconn",
            "30000 is above global.maxconn 20000, which caps the whole process",
        ),
        ("warning", "listen.c.failback", "failback is only used by balance writer-pin"),
        ("warning", "listen.c.forwardfor", "forwardfor has no effect in mode tcp"),
    ]


def test_writer_pin_rules() -> None:
    found = run(
        lst(balance="writer-pin"),
        lst(
            "db",
            3306,
            mode="tcp",
            log_format="tcplog",
            balance="writer-pin",
            servers=(srv("a", priority=1), srv("b", 82, backup=True)),
        ),
    )
    assert found == [
        (
            "error",
            "listen.web.balance",
            "writer-pin needs mode tcp (it pins whole connections to one writer node)",
        ),
        (
            "warning",
            "listen.db.servers[1].backup",
            "backup under writer-pin: it becomes writer only when no active server is up; "
            "order writers with priority instead",
        ),
    ]


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (
            (srv(disabled=True), srv("b", 82, disabled=True)),
            "every server is disabled: all requests will get 503",
        ),
        ((srv(backup=True), srv("b", 82, disabled=True)), "every enabled server is a backup"),
        (
            (srv(weight=0), srv("b", 82, backup=True)),
            "every active server has weight 0: only backups get traffic",
        ),
    ],
)
def test_no_usable_server_warnings(servers: tuple[ServerConf, ...], message: str) -> None:
    assert run(lst(servers=servers)) == [("warning", "listen.web", message)]


@pytest.mark.parametrize(
    ("mode", "name", "which"),
    [
        ("tcp", "connect", "every mode"),
        ("tcp", "client", "every mode"),
        ("tcp", "server", "every mode"),
        ("tcp", "tunnel", "every mode"),
        ("http", "http_request", "mode http"),
        ("http", "http_keep_alive", "mode http"),
    ],
)
def test_required_timeouts(mode: str, name: str, which: str) -> None:
    timeouts = Timeouts(**{name: 0.0})  # type: ignore[arg-type]
    found = run(lst(mode=mode, log_format="tcplog", timeout=timeouts))
    assert found == [
        (
            "error",
            f"listen.web.timeout.{name}",
            f"timeout {name} must be more than 0s (required in {which})",
        )
    ]


def test_http_timeouts_not_required_in_tcp_and_queue_may_be_zero() -> None:
    t = Timeouts(http_request=0.0, http_keep_alive=0.0, queue=0.0)
    assert run(lst(mode="tcp", log_format="tcplog", timeout=t)) == []


def test_health_rules() -> None:
    bad = Health(
        type="http",
        path="health",
        expect=((500, 200),),
        password="x",
        password_file="/p",
        params=CheckParams(inter=0.0, fastinter=0.0, downinter=0.0, rise=0, fall=0, timeout=0.0),
    )
    found = run(lst(health=bad))
    assert [(s, p) for s, p, _ in found] == [
        ("error", "listen.web.health.path"),
        ("error", "listen.web.health.expect"),
        ("error", "listen.web.health.password"),
        ("error", "listen.web.health.rise"),
        ("error", "listen.web.health.fall"),
        ("error", "listen.web.health.inter"),
        ("error", "listen.web.health.fastinter"),
        ("error", "listen.web.health.downinter"),
        ("error", "listen.web.health.timeout"),
    ]


def test_health_path_irrelevant_for_tcp_checks_and_slow_timeout_warns() -> None:
    h = Health(type="tcp", path="x", params=CheckParams(inter=1.0, timeout=2.0))
    assert run(lst(health=h)) == [
        (
            "warning",
            "listen.web.health.timeout",
            "check timeout is longer than inter: a slow server is checked again before the "
            "previous check gave up",
        )
    ]


def test_critical_without_health() -> None:
    assert run(lst(critical=True)) == [
        (
            "warning",
            "listen.web.critical",
            "critical without health: VRRP never sees this listener's servers fail",
        )
    ]


# --- through the loader: positions and inheritance ------------------------------------


def load(text: str) -> list[Diagnostic]:
    return analyze_text(textwrap.dedent(text), "t.yaml")[1]


def test_inherited_bad_default_is_reported_once_where_written() -> None:
    found = load(
        """\
        defaults:
          check: {rise: 0}
        listen:
          a:
            bind: ["127.0.0.1:80"]
            health: {type: tcp}
            servers: [{name: s, address: "127.0.0.1:81"}]
          b:
            bind: ["127.0.0.1:90"]
            health: {type: tcp}
            servers: [{name: s, address: "127.0.0.1:91"}]
        """
    )
    assert [str(d) for d in found] == [
        "t.yaml:2:17: error: defaults.check.rise: must be at least 1, got 0"
    ]


def test_health_override_of_a_bad_default_is_clean() -> None:
    found = load(
        """\
        defaults:
          check: {rise: 0}
        listen:
          a:
            bind: ["127.0.0.1:80"]
            health: {type: tcp, rise: 1}
            servers: [{name: s, address: "127.0.0.1:81"}]
        """
    )
    assert found == []


def test_rejected_server_does_not_shift_paths_or_cause_no_servers() -> None:
    found = load(
        """\
        listen:
          a:
            bind: ["127.0.0.1:80"]
            servers:
              - {name: s, address: "nope"}
              - {name: t, address: "127.0.0.1:81", weight: 999}
        """
    )
    assert [(d.line, d.path) for d in found] == [
        (5, "listen.a.servers[0].address"),
        (6, "listen.a.servers[1].weight"),
    ]


def test_health_keys_for_another_type_warn() -> None:
    found = load(
        """\
        listen:
          a:
            bind: ["127.0.0.1:80"]
            health: {type: tcp, path: /x, user: u}
            servers: [{name: s, address: "127.0.0.1:81"}]
        """
    )
    assert [str(d) for d in found] == [
        "t.yaml:4:25: warning: listen.a.health.path: 'path' has no effect with health type tcp",
        "t.yaml:4:35: warning: listen.a.health.user: 'user' has no effect with health type tcp",
    ]


def test_explicit_httplog_on_tcp_warns_and_falls_back() -> None:
    cfg, found = analyze_text(
        'listen:\n  a:\n    mode: tcp\n    log_format: httplog\n    bind: ["127.0.0.1:80"]\n'
        '    servers: [{name: s, address: "127.0.0.1:81"}]\n',
        "t.yaml",
    )
    assert cfg is not None and cfg.listen("a").log_format == "tcplog"
    assert [str(d) for d in found] == [
        "t.yaml:4:17: warning: listen.a.log_format: log_format httplog needs mode http; "
        "tcplog is used"
    ]
