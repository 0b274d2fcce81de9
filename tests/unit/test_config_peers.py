"""`global.peers` and `global.state_dir` (writer-pin across pylb nodes), and the secret
files `pylb run` requires readable (`check_files`): every problem at its FILE:LINE:COL."""

from __future__ import annotations

import textwrap
from pathlib import Path

from pylb.config.errors import Diagnostic
from pylb.config.load import analyze_text, load_config_text
from pylb.config.model import Address, PeersConf

WRITER = """\
listen:
  mysql:
    bind: ["127.0.0.1:3306"]
    mode: tcp
    balance: writer-pin
    health: {type: galera, user: clustercheck, password_file: PWFILE}
    servers:
      - {name: dbs01, address: "127.0.0.1:13306"}
      - {name: dbs02, address: "127.0.0.1:23306"}
"""


def conf(global_: str, listen: str = WRITER) -> str:
    return "global:\n" + textwrap.indent(textwrap.dedent(global_), "  ") + listen


def diags(text: str, files: bool = False) -> list[str]:
    _, found = analyze_text(text, "t.yaml", files=files)
    return [str(d) for d in found]


def test_peers_mapping_form_is_loaded() -> None:
    cfg = load_config_text(
        conf(
            """\
            state_dir: /var/lib/pylb
            peers:
              node: lb01
              bind: "192.0.2.1:10000"
              nodes: {lb02: "192.0.2.2:10000", lb03: "192.0.2.3:10000"}
              key_file: /etc/pylb/peers.key
              interval: 500ms
            """
        )
    )
    assert cfg.global_.state_dir == "/var/lib/pylb"
    assert cfg.global_.peers == PeersConf(
        bind=Address("192.0.2.1", 10000),
        node="lb01",
        nodes=(("lb02", Address("192.0.2.2", 10000)), ("lb03", Address("192.0.2.3", 10000))),
        key_file="/etc/pylb/peers.key",
        interval=0.5,
    )


def test_peers_list_form_as_docs_galera_shows_it() -> None:
    cfg = load_config_text(
        conf(
            """\
            peers: {node: lb01, bind: "192.0.2.1:10000", nodes: ["192.0.2.2:10000"],
                    key_file: /k}
            """
        )
    )
    p = cfg.global_.peers
    assert p is not None and p.nodes == (("192.0.2.2:10000", Address("192.0.2.2", 10000)),)
    assert p.interval == 1.0  # default


def test_peers_unknown_key_with_suggestion_at_its_position() -> None:
    out = diags(conf('peers: {bind: "192.0.2.1:10000", key_fle: /k}\n'))
    assert out == [
        "t.yaml:2:36: error: global.peers: unknown key 'key_fle', did you mean 'key_file'?"
    ]


def test_peers_shape_errors_at_their_positions() -> None:
    out = diags(
        conf(
            """\
            peers:
              node: lb01
              nodes: {lb02: "db2.example:10000", lb03: "192.0.2.3"}
              interval: 5
            """
        )
    )
    assert out == [
        "t.yaml:2:3: error: global.peers: peers needs 'bind' (this node's sync address IP:PORT)",
    ]
    out = diags(
        conf(
            """\
            peers:
              bind: "192.0.2.1:10000"
              nodes: {lb02: "db2.example:10000", lb03: "192.0.2.3"}
              interval: 5
              key_file: /k
            """
        )
    )
    assert out == [
        "t.yaml:4:19: error: global.peers.nodes.lb02: peer address db2.example:10000 must be "
        "an IP address, not a name",
        "t.yaml:4:46: error: global.peers.nodes.lb03: address '192.0.2.3' has no port: write "
        "HOST:PORT, e.g. 192.0.2.3:80",
        "t.yaml:5:15: error: global.peers.interval: duration 5 has no unit: add one, e.g. 5s "
        "or 5ms (HAProxy reads a bare number as milliseconds, pylb refuses to guess)",
    ]


def test_peers_lint_rules() -> None:
    out = diags(
        conf(
            """\
            state_dir: var/lib/pylb
            peers:
              node: lb01
              bind: "192.0.2.1:10000"
              nodes: {lb01: "192.0.2.2:10000", lb02: "192.0.2.1:10000", lb03: "192.0.2.2:10000"}
              interval: 0s
            """
        )
    )
    assert out == [
        "t.yaml:2:14: error: global.state_dir: must be an absolute path, got 'var/lib/pylb'",
        "t.yaml:3:3: error: global.peers: peers with nodes need key_file (a shared secret: "
        "datagrams are authenticated with HMAC-SHA256)",
        "t.yaml:6:19: error: global.peers.nodes.lb01: 'lb01' is this node's own name "
        "(global.peers.node): list the others",
        "t.yaml:6:44: error: global.peers.nodes.lb02: 192.0.2.1:10000 is this node's own "
        "peers bind address: list the others",
        "t.yaml:6:69: error: global.peers.nodes.lb03: 192.0.2.2:10000 is listed twice "
        "(first at global.peers.nodes.lb01)",
        "t.yaml:7:15: error: global.peers.interval: must be more than 0s and at most 60s",
    ]


def test_peers_without_writer_pin_is_a_warning() -> None:
    http = (
        'listen:\n  web:\n    bind: ["127.0.0.1:80"]\n'
        '    servers: [{name: a, address: "127.0.0.1:81"}]\n'
    )
    out = diags(conf('peers: {bind: "192.0.2.1:10000"}\n', http))
    assert out == [
        "t.yaml:2:3: warning: global.peers: peers only sync the writer of balance writer-pin "
        "listeners: none here"
    ]


def test_secret_files_are_checked_only_when_asked(tmp_path: Path) -> None:
    """`pylb check` may run where the secrets are not; `pylb run` and reload need them."""
    key = tmp_path / "peers.key"
    text = conf(
        f'peers: {{bind: "192.0.2.1:10000", nodes: ["192.0.2.2:10000"], key_file: {key}}}\n',
        WRITER.replace("PWFILE", str(tmp_path / "missing.pw")),
    )
    assert diags(text) == []
    out = diags(text, files=True)
    pw_col = WRITER.splitlines()[5].index("PWFILE") + 1
    assert out == [
        f"t.yaml:2:74: error: global.peers.key_file: key_file {key}: no such file",
        f"t.yaml:8:{pw_col}: error: listen.mysql.health.password_file: password_file "
        f"{tmp_path / 'missing.pw'}: no such file",
    ]
    key.write_text("\n")
    (tmp_path / "missing.pw").write_text("secret\n")
    out = diags(text, files=True)
    assert out == [f"t.yaml:2:74: error: global.peers.key_file: key_file {key}: is empty"]
    key.write_text("k\n")
    assert diags(text, files=True) == []


def test_diagnostic_type() -> None:
    _, found = analyze_text(conf('peers: {bind: "192.0.2.1:0"}\n'), "t.yaml")
    assert found and all(isinstance(d, Diagnostic) for d in found)
    assert [d.path for d in found if d.is_error] == ["global.peers.bind"]
