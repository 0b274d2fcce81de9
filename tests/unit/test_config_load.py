"""The loader: YAML/JSON/dict into the model, every error at its exact FILE:LINE:COL."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylb.config.errors import ConfigError, Diagnostic
from pylb.config.load import (
    analyze_dict,
    analyze_text,
    config_from_dict,
    load_config,
    load_config_text,
    load_config_with_warnings,
    parse_address,
)
from pylb.config.model import Address, Config

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

MINIMAL = """\
listen:
  web:
    bind: ["127.0.0.1:8080"]
    servers:
      - {name: a, address: "127.0.0.1:8081"}
"""


def diags(text: str) -> list[Diagnostic]:
    """Diagnostics of `text` (dedented) read as file t.yaml."""
    _, found = analyze_text(textwrap.dedent(text), "t.yaml")
    return found


def errors(text: str) -> list[str]:
    return [str(d) for d in diags(text) if d.is_error]


def only_error(text: str) -> Diagnostic:
    found = [d for d in diags(text) if d.is_error]
    assert len(found) == 1, [str(d) for d in found]
    return found[0]


# --- positions -------------------------------------------------------------------------


def test_unknown_key_with_suggestion_at_the_key() -> None:
    d = only_error(
        """\
        listen:
          keystone:
            bind: ["127.0.0.1:5000"]
            balnce: roundrobin
            servers:
              - {name: a, address: "127.0.0.1:5001"}
        """
    )
    assert str(d) == (
        "t.yaml:4:5: error: listen.keystone: unknown key 'balnce', did you mean 'balance'?"
    )
    assert (d.line, d.col, d.path) == (4, 5, "listen.keystone")


@pytest.mark.parametrize(
    ("section", "text", "where", "suggestion"),
    [
        ("global", "global:\n  wrkers: 2\n" + MINIMAL, (2, 3), "workers"),
        ("global.stats", "global:\n  stats: {bnd: '127.0.0.1:1'}\n" + MINIMAL, (2, 11), "bind"),
        ("global.log", "global:\n  log: {levl: info}\n" + MINIMAL, (2, 9), "level"),
        ("defaults", "defaults:\n  rettries: 2\n" + MINIMAL, (2, 3), "retries"),
        ("defaults.timeout", "defaults:\n  timeout: {conect: 1s}\n" + MINIMAL, (2, 13), "connect"),
        ("defaults.check", "defaults:\n  check: {rize: 2}\n" + MINIMAL, (2, 11), "rise"),
        ("listen.web.timeout", MINIMAL + "    timeout: {sever: 1s}\n", (6, 15), "server"),
        ("listen.web.health", MINIMAL + "    health: {pth: /}\n", (6, 14), "path"),
        (
            "listen.web.servers[1]",
            MINIMAL + "      - {nme: b, address: '127.0.0.1:2'}\n",
            (6, 10),
            "name",
        ),
        ("", "listn: {}\n" + MINIMAL, (1, 1), "listen"),
    ],
)
def test_unknown_keys_in_every_section(
    section: str, text: str, where: tuple[int, int], suggestion: str
) -> None:
    found = [d for d in diags(text) if "unknown key" in d.message]
    assert len(found) == 1, [str(d) for d in diags(text)]
    d = found[0]
    assert (d.line, d.col) == where
    assert d.path == section
    assert d.message.endswith(f"did you mean {suggestion!r}?")


def test_unknown_key_without_close_match_lists_the_known_ones() -> None:
    d = only_error(MINIMAL + "    zzz: 1\n")
    assert "known keys: bind, mode, balance" in d.message


def test_bad_duration_at_the_value() -> None:
    d = only_error(
        textwrap.dedent(
            """\
            defaults:
              timeout: {connect: 5s, server: 5x}
            """
        )
        + MINIMAL
    )
    assert (d.line, d.col, d.path) == (2, 34, "defaults.timeout.server")
    assert "invalid duration '5x'" in d.message


def test_bare_number_duration_has_a_hint() -> None:
    d = only_error(MINIMAL + "    timeout:\n      client: 30\n")
    assert (d.line, d.col, d.path) == (7, 15, "listen.web.timeout.client")
    assert "add one, e.g. 30s or 30ms" in d.message


def test_bad_address_at_the_value() -> None:
    found = errors(
        """\
        listen:
          web:
            bind: ["127.0.0.1:80", "localhost:81", "127.0.0.1:0"]
            servers:
              - {name: a, address: "127.0.0.1"}
              - {name: b, address: "300.1.1.1:80"}
              - {name: c, address: "2001:db8::1:80"}
        """
    )
    assert found == [
        "t.yaml:3:28: error: listen.web.bind[1]: bind address 'localhost:81': 'localhost' is "
        "not an IP address (bind to an IP literal, or *:PORT for all addresses)",
        "t.yaml:3:44: error: listen.web.bind[2]: address '127.0.0.1:0': port 0 is out of "
        "range 1..65535",
        "t.yaml:5:28: error: listen.web.servers[0].address: address '127.0.0.1' has no port: "
        "write HOST:PORT, e.g. 127.0.0.1:80",
        "t.yaml:6:28: error: listen.web.servers[1].address: address '300.1.1.1:80': "
        "'300.1.1.1' is not a valid IPv4 address",
        "t.yaml:7:28: error: listen.web.servers[2].address: address '2001:db8::1:80': an IPv6 "
        "address needs brackets, e.g. [2001:db8::1]:80",
    ]


def test_duplicate_server_name() -> None:
    d = only_error(
        """\
        listen:
          web:
            bind: ["127.0.0.1:80"]
            servers:
              - {name: a, address: "127.0.0.1:81"}
              - {name: b, address: "127.0.0.1:82"}
              - {name: a, address: "127.0.0.1:83"}
        """
    )
    assert (d.line, d.col, d.path) == (7, 16, "listen.web.servers[2].name")
    assert d.message == (
        "duplicate server name 'a' in listen web (first at listen.web.servers[0] (line 5))"
    )


def test_duplicate_bind_across_listeners() -> None:
    d = only_error(
        """\
        listen:
          one:
            bind: ["127.0.0.1:80"]
            servers: [{name: a, address: "127.0.0.1:81"}]
          two:
            bind:
              - "127.0.0.2:80"
              - "127.0.0.1:80"
            servers: [{name: a, address: "127.0.0.1:81"}]
        """
    )
    assert (d.line, d.col, d.path) == (8, 9, "listen.two.bind[1]")
    assert d.message == "127.0.0.1:80 is already bound by listen.one.bind[0] (line 3)"


def test_duplicate_bind_with_stats_and_ipv6_spelling() -> None:
    found = errors(
        """\
        global:
          stats: {bind: "[::1]:8404"}
        listen:
          web:
            bind: ["[0:0::1]:8404"]
            servers: [{name: a, address: "127.0.0.1:81"}]
        """
    )
    assert found == [
        "t.yaml:5:12: error: listen.web.bind[0]: [::1]:8404 is already bound by "
        "global.stats.bind (line 2)"
    ]


def test_weight_out_of_range() -> None:
    d = only_error(MINIMAL.replace('"127.0.0.1:8081"}', '"127.0.0.1:8081", weight: 300}'))
    assert (d.line, d.col, d.path) == (5, 54, "listen.web.servers[0].weight")
    assert d.message == "weight 300 is out of range 0..256"


def test_no_servers() -> None:
    d = only_error(
        """\
        listen:
          web:
            bind: ["127.0.0.1:80"]
            servers: []
        """
    )
    assert (d.line, d.col, d.path) == (4, 5, "listen.web.servers")
    assert d.message.startswith("no servers")


def test_no_servers_key_at_all_points_at_the_listener() -> None:
    d = only_error('listen:\n  web:\n    bind: ["127.0.0.1:80"]\n')
    assert (d.line, d.col, d.path) == (2, 3, "listen.web.servers")


def test_missing_required_timeout() -> None:
    found = errors(
        """\
        defaults:
          mode: tcp
          timeout: {connect: 0s}
        listen:
          web:
            mode: http
            bind: ["127.0.0.1:80"]
            timeout:
              http_request: 0ms
            servers: [{name: a, address: "127.0.0.1:81"}]
        """
    )
    assert found == [
        "t.yaml:3:22: error: defaults.timeout.connect: timeout connect must be more than 0s "
        "(required in every mode)",
        "t.yaml:9:21: error: listen.web.timeout.http_request: timeout http_request must be "
        "more than 0s (required in mode http)",
    ]


def test_duplicate_listener_name_is_caught_from_the_node_tree() -> None:
    found = errors(
        """\
        listen:
          web:
            bind: ["127.0.0.1:80"]
            servers: [{name: a, address: "127.0.0.1:81"}]
          web:
            bind: ["127.0.0.1:90"]
            servers: [{name: a, address: "127.0.0.1:91"}]
        """
    )
    assert found == [
        "t.yaml:5:3: error: listen.web: duplicate listener name 'web' (first at line 2)"
    ]


def test_duplicate_keys_anywhere() -> None:
    found = errors(MINIMAL + "    mode: http\n    mode: tcp\n")
    assert found == ["t.yaml:7:5: error: listen.web.mode: duplicate key 'mode' (first at line 6)"]


def test_all_errors_are_collected() -> None:
    found = diags(
        """\
        global: {workers: 0}
        listen:
          web:
            bind: ["127.0.0.1:80", "127.0.0.1:80"]
            mode: htp
          db:
            mode: http
            balance: writer-pin
            bind: ["127.0.0.1:3306"]
            servers:
              - {name: a, address: "127.0.0.1:81", weight: 257, maxconn: 0}
              - {name: a, address: "127.0.0.1:82", weight: -1}
        """
    )
    assert [(d.line, d.path) for d in found if d.is_error] == [
        (1, "global.workers"),
        (5, "listen.web.mode"),
        (8, "listen.db.balance"),
        (11, "listen.db.servers[0].weight"),
        (11, "listen.db.servers[0].maxconn"),
        (12, "listen.db.servers[1].name"),
        (12, "listen.db.servers[1].weight"),
    ]
    assert "did you mean 'http'?" in found[1].message


def test_yaml_syntax_error_position() -> None:
    d = only_error("listen:\n  web: {bind: [1\n")
    assert (d.line, d.col) == (3, 1)
    assert d.message.startswith("YAML: ")


def test_type_errors() -> None:
    found = errors(MINIMAL.replace("servers:", "retries: three\n    redispatch: 1\n    servers:"))
    assert found == [
        "t.yaml:4:14: error: listen.web.retries: expected a decimal integer, got a string 'three'",
        "t.yaml:5:17: error: listen.web.redispatch: expected true or false, got an integer '1'",
    ]


def test_unsafe_tags_are_refused_not_constructed() -> None:
    found = errors(MINIMAL + "    retries: !!python/object/apply:os.system [echo]\n")
    assert found == ["t.yaml:6:14: error: listen.web.retries: expected an integer, got a list"]
    found = errors(MINIMAL + "    retries: !custom 3\n")
    assert found == [
        "t.yaml:6:14: error: listen.web.retries: unsupported tag '!custom': expected an integer"
    ]


# --- the model -------------------------------------------------------------------------


def test_defaults_are_inherited_and_overridden_per_key() -> None:
    cfg = load_config_text(
        textwrap.dedent(
            """\
            defaults:
              mode: tcp
              balance: leastconn
              retries: 5
              redispatch: false
              maxconn: 100
              timeout: {connect: 1s, client: 2m, server: 3m, tunnel: 2h}
              check: {inter: 3s, rise: 4, fall: 5}
            listen:
              a:
                bind: ["127.0.0.1:80"]
                servers: [{name: s, address: "127.0.0.1:81"}]
              b:
                mode: http
                balance: roundrobin
                timeout: {server: 10s}
                health: {type: http, path: /ping, inter: 500ms, fall: 2, expect: "200,204,300-399"}
                bind: ["127.0.0.1:90"]
                servers: [{name: s, address: "127.0.0.1:91"}]
            """
        ),
        "t.yaml",
    )
    a, b = cfg.listens
    assert (a.mode, a.balance, a.retries, a.redispatch, a.maxconn) == (
        "tcp",
        "leastconn",
        5,
        False,
        100,
    )
    assert a.log_format == "tcplog"  # httplog is meaningless on tcp
    assert (a.timeout.connect, a.timeout.client, a.timeout.server, a.timeout.tunnel) == (
        1.0,
        120.0,
        180.0,
        7200.0,
    )
    assert a.timeout.queue == 30.0  # the model's default
    assert a.health is None
    assert (b.mode, b.balance, b.retries, b.log_format) == ("http", "roundrobin", 5, "httplog")
    assert (b.timeout.connect, b.timeout.client, b.timeout.server) == (1.0, 120.0, 10.0)
    assert b.health is not None
    p = b.health.params
    assert (p.inter, p.rise, p.fall, p.fastinter, p.downinter) == (0.5, 4, 2, 0.5, 5.0)
    assert b.health.path == "/ping"
    assert b.health.expect == ((200, 200), (204, 204), (300, 399))


def test_server_fields_and_positions() -> None:
    cfg = load_config_text(
        textwrap.dedent(
            """\
            listen:
              db:
                mode: tcp
                balance: writer-pin
                bind: ["*:3306", ":::3307", "[2001:DB8::1]:3308", ":3309"]
                health: {type: galera, user: u, password_file: /etc/pw}
                servers:
                  - name: a
                    address: "db1.example:3306"
                    weight: 0
                    maxconn: 10
                    check_port: 9200
                    check_address: 192.0.2.9
                    priority: 2
                  - {name: b, address: "[2001:db8::2]:3306", disabled: yes, check: false}
                  - {name: c, address: "192.0.2.3:3306", backup: true, maxconn: null}
            """
        ),
        "t.yaml",
    )
    db = cfg.listen("db")
    assert db.binds == (
        Address("0.0.0.0", 3306),
        Address("::", 3307),
        Address("2001:db8::1", 3308),
        Address("0.0.0.0", 3309),
    )
    a, b, c = db.servers
    assert (a.name, a.address, a.weight, a.maxconn, a.check_port, a.check_address, a.priority) == (
        "a",
        Address("db1.example", 3306),
        0,
        10,
        9200,
        "192.0.2.9",
        2,
    )
    assert (b.address, b.disabled, b.check) == (Address("2001:db8::2", 3306), True, False)
    assert (c.backup, c.maxconn) == (True, None)
    assert a.pos is not None and (a.pos.line, a.pos.col) == (8, 9)
    assert db.pos is not None and (db.pos.line, db.pos.col) == (2, 3)
    assert db.health is not None and db.health.password_file == "/etc/pw"
    assert db.health.password is None  # the file is read by the checker, not the loader


def test_json_input_is_accepted(tmp_path: Path) -> None:
    doc = {
        "global": {"workers": 2, "log": {"target": "none"}},
        "defaults": {"timeout": {"connect": "250ms"}},
        "listen": {
            "web": {
                "bind": ["127.0.0.1:80"],
                "forwardfor": True,
                "servers": [{"name": "a", "address": "127.0.0.1:81", "weight": 2}],
            }
        },
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc, indent="\t"))
    cfg = load_config(str(path))
    assert cfg.global_.workers == 2 and not cfg.global_.log.enabled
    web = cfg.listen("web")
    assert web.forwardfor and web.timeout.connect == 0.25 and web.servers[0].weight == 2
    assert cfg.source == str(path)


def test_json_errors_have_positions(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        '{"listen": {"web": {"bind": ["127.0.0.1:80"],\n "servers": [], "modee": "tcp"}}}\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert [str(d) for d in e.value.diagnostics] == [
        f"{path}:2:2: error: listen.web.servers: no servers: add at least one under servers:",
        f"{path}:2:17: error: listen.web: unknown key 'modee', did you mean 'mode'?",
    ]


def test_merge_keys_are_honoured() -> None:
    cfg = load_config_text(
        textwrap.dedent(
            """\
            listen:
              a: &base
                bind: ["127.0.0.1:80"]
                mode: tcp
                servers: [{name: s, address: "127.0.0.1:81"}]
              b:
                <<: *base
                bind: ["127.0.0.1:90"]
            """
        )
    )
    assert cfg.listen("b").mode == "tcp"
    assert cfg.listen("b").binds == (Address("127.0.0.1", 90),)


def test_vrrp_is_kept_raw() -> None:
    inst = "{name: VI_1, interface: eth0, vrid: 51, virtual_ipaddresses: [192.0.2.100/24]}"
    cfg = load_config_text(f"vrrp:\n  instances:\n    - {inst}\n")
    assert cfg.vrrp == {
        "instances": [
            {
                "name": "VI_1",
                "interface": "eth0",
                "vrid": 51,
                "virtual_ipaddresses": ["192.0.2.100/24"],
            }
        ]
    }
    assert cfg.listens == ()


def test_vrrp_is_checked_at_load_with_positions() -> None:
    """The VRRP subsystem's diagnostics are part of the load (`pylb check`, run, reload)."""
    text = "vrrp:\n  instances:\n    - {name: VI_1, interface: eth0, vrid: 300}\n"
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "n.yaml")
    assert "n.yaml:3:" in e.value.report() and "vrrp.instances[0].vrid" in e.value.report()


def test_config_from_dict_for_the_demo() -> None:
    cfg = config_from_dict(
        {
            "listen": {
                "demo": {
                    "bind": ["127.0.0.1:0"],
                    "health": {"type": "http", "path": "/"},
                    "servers": [
                        {"name": f"web{i}", "address": f"127.0.0.1:{8080 + i}"} for i in (1, 2, 3)
                    ],
                }
            }
        },
        "demo",
        allow_port_zero=True,
    )
    assert isinstance(cfg, Config)
    assert [s.name for s in cfg.listen("demo").servers] == ["web1", "web2", "web3"]
    with pytest.raises(ConfigError) as e:
        config_from_dict({"listen": {"demo": {"bind": ["127.0.0.1:0"], "servers": []}}}, "demo")
    assert [str(d) for d in e.value.diagnostics] == [
        "demo: error: listen.demo.bind[0]: address '127.0.0.1:0': port 0 is out of range 1..65535",
        "demo: error: listen.demo.servers: no servers: add at least one under servers:",
    ]


def test_warnings_do_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace('8081"}', '8081", disabled: true}'))
    cfg, warnings = load_config_with_warnings(str(path))
    assert cfg.listen("web").servers[0].disabled
    assert [str(w) for w in warnings] == [
        f"{path}:2:3: warning: listen.web: every server is disabled: all requests will get 503"
    ]


def test_config_error_message_and_report() -> None:
    with pytest.raises(ConfigError) as e:
        load_config_text("global: {workers: 0, maxconn: 0}\n" + MINIMAL, "x.yaml")
    assert str(e.value) == (
        "x.yaml:1:19: error: global.workers: must be at least 1, got 0 (and 1 more errors)"
    )
    assert e.value.report().count("\n") == len(e.value.diagnostics) - 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "nope.yaml"))
    (d,) = e.value.diagnostics
    assert d.line == 0 and "No such file" in d.message and str(tmp_path) in str(d)


@pytest.mark.parametrize("name", ["demo.yaml", "mcp-proxy.yaml"])
def test_example_configs_load_clean(name: str) -> None:
    cfg, warnings = load_config_with_warnings(str(CONF_DIR / name))
    assert warnings == []
    assert cfg.listens


def test_demo_config_shape() -> None:
    demo = load_config(str(CONF_DIR / "demo.yaml")).listens[0]
    assert demo.binds == (Address("127.0.0.1", 8080),)
    assert [s.address.port for s in demo.servers] == [8081, 8082, 8083]
    assert demo.balance == "roundrobin" and demo.mode == "http"
    assert demo.health is not None and (demo.health.type, demo.health.method, demo.health.path) == (
        "http",
        "GET",
        "/",
    )


# --- addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bind", "expected"),
    [
        ("192.0.2.1:80", True, Address("192.0.2.1", 80)),
        ("[2001:db8::1]:443", True, Address("2001:db8::1", 443)),
        ("[::]:80", True, Address("::", 80)),
        (":::80", True, Address("::", 80)),
        ("*:80", True, Address("0.0.0.0", 80)),
        ("db-1.example.org:3306", False, Address("db-1.example.org", 3306)),
        ("localhost:65535", False, Address("localhost", 65535)),
    ],
)
def test_addresses(text: str, bind: bool, expected: Address) -> None:
    assert parse_address(text, bind=bind) == expected


@pytest.mark.parametrize(
    ("text", "bind", "reason"),
    [
        ("192.0.2.1", True, "has no port"),
        ("192.0.2.1:", True, "is not a number"),
        ("192.0.2.1:http", True, "is not a number"),
        ("192.0.2.1:65536", True, "out of range"),
        ("192.0.2.1:123456", True, "is not a number"),
        ("[2001:db8::1:80", True, "missing ']'"),
        ("[2001:db8::1]80", True, "missing ':PORT'"),
        ("[192.0.2.1]:80", True, "is not an IPv6 address"),
        ("2001:db8::1:80", False, "needs brackets"),
        ("example.org:80", True, "is not an IP address"),
        ("bad_-.host..x:80", False, "not a valid host name"),
        ("1.2.3:80", False, "not a valid IPv4 address"),
        ("", False, "empty address"),
    ],
)
def test_bad_addresses(text: str, bind: bool, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_address(text, bind=bind)


# --- robustness ------------------------------------------------------------------------

_KEYS = sorted(
    {
        "global",
        "defaults",
        "listen",
        "vrrp",
        "web",
        "bind",
        "servers",
        "name",
        "address",
        "timeout",
        "check",
        "health",
        "type",
        "expect",
        "path",
        "weight",
        "mode",
        "balance",
        "connect",
        "rise",
        "stats",
        "log",
        "auth",
        "user",
        "target",
        "maxconn",
        "workers",
    }
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.floats(allow_nan=False),
    st.sampled_from(["5s", "127.0.0.1:80", "http", "tcp", "/", "200-399", "x", "", "galera"]),
    st.text(max_size=8),
)
_TREES = st.recursive(
    _SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(_KEYS), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _TREES, max_size=4))
def test_any_shape_gives_diagnostics_not_exceptions(data: dict) -> None:
    config, found = analyze_dict(data, "fuzz")
    assert (config is None) == any(d.is_error for d in found)
    for d in found:
        assert d.severity in ("error", "warning") and d.message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text_gives_diagnostics_not_exceptions(text: str) -> None:
    config, found = analyze_text(text, "fuzz")
    assert (config is None) == any(d.is_error for d in found)


def test_expect_forms() -> None:
    for written, ranges in (
        ("200", ((200, 200),)),
        ('"200-399"', ((200, 399),)),
        ("'200, 204 ,300-399'", ((200, 200), (204, 204), (300, 399))),
    ):
        cfg = load_config_text(MINIMAL + f"    health: {{type: http, expect: {written}}}\n")
        assert cfg.listens[0].health is not None
        assert cfg.listens[0].health.expect == ranges
    for bad in ("99", "399-200", "2xx", "600", "200-"):
        d = only_error(MINIMAL + f"    health: {{type: http, expect: '{bad}'}}\n")
        assert d.path == "listen.web.health.expect"


def test_empty_sections_are_empty_not_errors() -> None:
    cfg = load_config_text("global:\ndefaults:\n  timeout:\n  check:\nvrrp:\n" + MINIMAL)
    assert cfg.listens[0].timeout.connect == 5.0 and cfg.vrrp is None


@pytest.mark.parametrize(
    "target",
    [
        "stdout",
        "stderr",
        "none",
        "file:/var/log/pylb.log",
        "syslog:/dev/log",
        "syslog:udp:192.0.2.5:514",
    ],
)
def test_log_targets(target: str) -> None:
    cfg = load_config_text(f"global:\n  log: {{target: '{target}', level: notice}}\n" + MINIMAL)
    assert cfg.global_.log.target == target and cfg.global_.log.level == "notice"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("file:relative.log", "absolute path"),
        ("syslog:udp:host", "has no port"),
        ("syslog:tcp:x:1", "write syslog:/dev/log"),
        ("journal", "unknown log target"),
    ],
)
def test_bad_log_targets(target: str, reason: str) -> None:
    d = only_error(f"global:\n  log: '{target}'\n" + MINIMAL)
    assert (d.line, d.col, d.path) == (2, 8, "global.log.target")
    assert reason in d.message


def test_log_levels_match_what_logsetup_accepts() -> None:
    from pylb.config.load import LOG_LEVELS
    from pylb.logsetup import LEVELS

    assert set(LOG_LEVELS) == set(LEVELS)


def test_stats_section() -> None:
    cfg = load_config_text(
        "global:\n  stats:\n    bind: '127.0.0.1:8404'\n"
        "    auth: {user: admin, password_file: /etc/pw}\n" + MINIMAL
    )
    assert cfg.global_.stats is not None
    assert cfg.global_.stats.bind == Address("127.0.0.1", 8404)
    assert cfg.global_.stats.auth is not None and cfg.global_.stats.auth.password_file == "/etc/pw"
    found = errors(
        "global:\n  stats:\n    auth: {user: a, password: x, password_file: /p}\n" + MINIMAL
    )
    assert found == [
        "t.yaml:2:3: error: global.stats: stats needs a 'bind' address, e.g. 127.0.0.1:8404"
    ]
    found = errors(
        "global:\n  stats:\n    bind: 127.0.0.1:1\n"
        "    auth: {user: a, password: x, password_file: /p}\n" + MINIMAL
    )
    assert found == [
        "t.yaml:4:21: error: global.stats.auth.password: give either 'password' or "
        "'password_file', not both"
    ]
    found = errors("global:\n  stats:\n    bind: 127.0.0.1:1\n    auth: {}\n" + MINIMAL)
    assert found == ["t.yaml:4:5: error: global.stats.auth: auth needs a 'user'"]


def test_server_check_timing_overrides_the_listener() -> None:
    """HAProxy's `server s2 ... check inter 5s fall 1`: per server, else inherited."""
    cfg = load_config_text(
        textwrap.dedent(
            """\
            defaults:
              check: {inter: 2s, rise: 2, fall: 3}
            listen:
              api:
                bind: ["127.0.0.1:8000"]
                health: {type: tcp, inter: 1s}
                servers:
                  - {name: s1, address: "127.0.0.1:9001"}
                  - {name: s2, address: "127.0.0.1:9002", inter: 250ms, fall: 1, rise: 5}
            """
        ),
        "t.yaml",
    )
    api = cfg.listen("api")
    assert api.health is not None
    base = api.health.params
    s1, s2 = api.servers
    assert s1.check_params(base) is base
    p = s2.check_params(base)
    assert (p.inter, p.fall, p.rise, p.fastinter) == (0.25, 1, 5, base.fastinter)
    assert (base.inter, base.fall, base.rise) == (1.0, 3, 2)


def test_server_check_timing_errors_and_warnings() -> None:
    text = textwrap.dedent(
        """\
        listen:
          api:
            bind: ["127.0.0.1:8000"]
            health: {type: tcp}
            servers:
              - {name: s1, address: "127.0.0.1:9001", fall: 0}
              - {name: s2, address: "127.0.0.1:9002", inter: 5}
          web:
            bind: ["127.0.0.1:8001"]
            servers:
              - {name: s1, address: "127.0.0.1:9003", rise: 3}
        """
    )
    got = [str(d) for d in diags(text)]
    assert any(":6:" in d and "api.servers[0].fall: must be at least 1" in d for d in got), got
    assert any(":7:" in d and "api.servers[1].inter" in d and "unit" in d for d in got), got
    assert any("warning" in d and "web.servers[0].rise: rise has no effect" in d for d in got), got
