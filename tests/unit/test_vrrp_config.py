"""The `vrrp:` section -> InstanceConfig / VrrpConfig, with FILE:LINE:COL diagnostics."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
import yaml

from pylb.config.errors import ConfigError
from pylb.vrrp.config import (
    Positions,
    VrrpConfig,
    build_vrrp,
    check_vrrp,
    from_config,
    load_vrrp_file,
)
from pylb.vrrp.types import TrackInterface

FULL = textwrap.dedent(
    """\
    vrrp:
      control_socket: /run/pylb/vrrp.sock
      health_timeout: 2s
      instances:
        - name: VI_1
          interface: eth0
          vrid: 51
          priority: 110
          version: 2
          advert_interval: 1s
          preempt: false
          preempt_delay: 5s
          auth: {type: pass, password: secret12}
          unicast: {src: 192.0.2.1, peers: [192.0.2.2, 192.0.2.3]}
          virtual_ipaddresses: ["192.0.2.100/24", 192.0.2.101]
          track:
            proxy_weight: 50
            interfaces: [eth0, {name: eth1, weight: -20}]
            scripts:
              - {name: chk, path: /bin/true, interval: 2s, weight: -30, rise: 2, fall: 3}
          notify: {master: /x.sh m, backup: /x.sh, fault: /x.sh, stop: /x.sh}
          garp_master_repeat: 3
          garp_master_delay: 1s
          garp_master_refresh: 1m
        - name: VI_6
          interface: eth0
          vrid: 52
          version: 3
          advert_interval: 100ms
          virtual_ipaddresses: ["2001:db8::100/64"]
      sync_groups:
        - {name: G1, instances: [VI_1, VI_6]}
    """
)


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "pylb.yaml"
    p.write_text(text)
    return str(p)


def test_full_example_builds(tmp_path: Path) -> None:
    conf = load_vrrp_file(write(tmp_path, FULL))
    assert isinstance(conf, VrrpConfig)
    v1, v6 = conf.instances
    assert (v1.name, v1.vrid, v1.priority, v1.version) == ("VI_1", 51, 110, 2)
    assert v1.advert_interval == 1.0 and v1.preempt is False and v1.preempt_delay == 5.0
    assert v1.auth is not None and v1.auth.wire == b"secret12"
    assert v1.unicast is not None and len(v1.unicast.peers) == 2
    assert v1.virtual_ipaddresses[1] == ipaddress.ip_interface("192.0.2.101/32")
    assert v1.track.proxy_weight == 50
    assert v1.track.interfaces == (TrackInterface("eth0"), TrackInterface("eth1", -20))
    s = v1.track.scripts[0]
    assert (s.name, s.path, s.interval, s.weight, s.rise, s.fall) == (
        "chk",
        "/bin/true",
        2.0,
        -30,
        2,
        3,
    )
    assert v1.notify.master == "/x.sh m" and v1.garp_master_refresh == 60.0
    assert v6.version == 3 and v6.advert_interval == 0.1 and v6.family == 6
    assert conf.sync_groups[0].instances == ("VI_1", "VI_6")
    assert conf.group_of("VI_6") is conf.sync_groups[0]
    assert conf.control_socket == "/run/pylb/vrrp.sock" and conf.health_timeout == 2.0
    assert conf.instance("VI_6") is v6


def test_defaults_are_keepalived_s() -> None:
    conf = build_vrrp(
        {
            "instances": [
                {"name": "a", "interface": "eth0", "vrid": 1, "virtual_ipaddresses": ["192.0.2.1"]}
            ]
        }
    )
    inst = conf.instances[0]
    assert (inst.version, inst.priority, inst.advert_interval, inst.preempt) == (2, 100, 1.0, True)
    assert conf.sync_groups == ()


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    from pylb.config.load import load_config

    with pytest.raises(ConfigError) as e:  # the loader runs check_vrrp itself
        load_config(path)
    raw = yaml.safe_load(Path(path).read_text())["vrrp"]
    conf, diags = check_vrrp(raw, source=path)
    assert conf is None
    # the loader's diagnostics (positions from its own node tree) are the same
    assert [str(d) for d in e.value.diagnostics if d.path.startswith("vrrp")] == [
        str(d) for d in diags
    ]
    return [str(d).replace(path, "F") for d in diags if d.is_error]


def test_errors_carry_file_line_col_and_path(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        vrrp:
          instances:
            - name: VI_1
              interface: eth0
              vrid: 300
              priorty: 110
              advert_interval: 1
              virtual_ipaddresses: ["192.0.2.300/24"]
        """
    )
    errs = errors_of(tmp_path, text)
    assert "F:5:13: error: vrrp.instances[0].vrid: must be 1..255, got 300" in errs
    assert any(
        e.startswith("F:6:7: error: vrrp.instances[0].priorty: unknown key") and "'priority'" in e
        for e in errs
    )
    assert any(
        e.startswith("F:7:24: error: vrrp.instances[0].advert_interval: duration 1 has no unit")
        for e in errs
    )
    assert any(
        e.startswith("F:8:29: error: vrrp.instances[0].virtual_ipaddresses[0]:") for e in errs
    )


def test_cross_field_errors_point_at_the_key(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        vrrp:
          instances:
            - name: VI_1
              interface: eth0
              vrid: 1
              version: 3
              auth: {type: pass, password: secret}
              virtual_ipaddresses: ["192.0.2.1/24"]
            - name: VI_2
              interface: eth0
              vrid: 2
              version: 2
              advert_interval: 150ms
              virtual_ipaddresses: ["192.0.2.2/24"]
        """
    )
    errs = errors_of(tmp_path, text)
    assert any(
        e.startswith("F:7:13: error: vrrp.instances[0].auth: auth exists only in VRRPv2")
        for e in errs
    ), errs
    assert any(
        "vrrp.instances[1].advert_interval: advert_interval 0.15s: VRRPv2 needs whole seconds" in e
        for e in errs
    ), errs


def test_duplicates_and_sync_group_references(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        vrrp:
          instances:
            - {name: A, interface: eth0, vrid: 1, virtual_ipaddresses: [192.0.2.1]}
            - {name: A, interface: eth0, vrid: 2, virtual_ipaddresses: [192.0.2.2]}
            - {name: B, interface: eth0, vrid: 1, virtual_ipaddresses: [192.0.2.3]}
          sync_groups:
            - {name: G, instances: [A, Z]}
        """
    )
    errs = errors_of(tmp_path, text)
    assert any("vrrp.instances[1].name: duplicate instance name 'A'" in e for e in errs)
    assert any("vrrp.instances[2].vrid: VRID 1 is already used on eth0" in e for e in errs)
    assert any(
        e.startswith("F:7:32: error: vrrp.sync_groups[0].instances[1]: no instance named 'Z'")
        for e in errs
    ), errs


def test_missing_required_and_wrong_shapes() -> None:
    conf, diags = check_vrrp({"instances": [{"name": "x"}], "bogus": 1})
    assert conf is None
    text = [f"{d.path}: {d.message}" for d in diags]
    assert any("vrrp.bogus: unknown key" in t for t in text)
    assert any("missing required key 'interface'" in t for t in text)
    assert any("missing required key 'vrid'" in t for t in text)
    conf, diags = check_vrrp({"instances": "VI_1"})
    assert conf is None and "expected a list" in diags[0].message
    conf, diags = check_vrrp({"instances": []})
    assert conf is None and "at least one instance" in diags[0].message
    with pytest.raises(ConfigError) as ei:
        build_vrrp([1, 2])
    assert "must be a mapping" in str(ei.value)


def test_wrong_types_are_named() -> None:
    base = {"name": "a", "interface": "eth0", "vrid": 1, "virtual_ipaddresses": ["192.0.2.1"]}
    for key, value, want in [
        ("priority", True, "expected an integer 1..255, got a boolean"),
        ("preempt", "yes please", "expected true or false"),
        ("vrid", "51", "expected an integer"),
        ("auth", {"type": "ah", "password": "x"}, "only 'pass'"),
        ("auth", {"password": "123456789"}, "at most 8"),
        ("unicast", {"src": "192.0.2.1", "peers": ["2001:db8::1"]}, "one address family"),
        ("track", {"interfaces": [{"name": "eth1", "weight": 300}]}, "must be -254..254"),
        ("garp_master_delay", "soon", "invalid duration"),
    ]:
        conf, diags = check_vrrp({"instances": [{**base, key: value}]})
        assert conf is None, key
        assert any(want in d.message for d in diags), (key, [d.message for d in diags])


def test_positions_walk_and_fallback() -> None:
    pos = Positions.from_text("vrrp:\n  instances:\n    - {name: a, vrid: 1}\n")
    assert pos.find("vrrp.instances[0].vrid") == (3, 23)
    assert pos.find("vrrp.instances[0].vrid", key=True) == (3, 17)
    assert pos.find("vrrp.instances[0].nothing") == (3, 7)  # nearest written ancestor
    assert Positions.from_text(": : bad yaml [").find("vrrp") == (0, 0)


def test_from_config_without_vrrp_is_none() -> None:
    from pylb.config.load import load_config_text

    cfg = load_config_text(
        "vrrp:\n  instances:\n"
        "    - {name: a, interface: eth0, vrid: 7, virtual_ipaddresses: [192.0.2.7]}\n"
    )
    conf = from_config(cfg)
    assert conf is not None and conf.instances[0].vrid == 7
