"""The `vrrp:` section of the YAML config -> validated `InstanceConfig` objects.

`pylb.config.load` keeps `Config.vrrp` as the raw mapping (the VRRP subsystem owns its
schema). This module checks it the way the loader checks the rest: every problem is
collected, each is a `Diagnostic` with the key path (``vrrp.instances[0].priority``) and,
when the config came from a file, FILE:LINE:COL. Positions come from composing the file's
YAML once more (`yaml.compose`, no object construction) and walking to the path, so the
loader's private source map need not be exported.

Shape (docs/vrrp.md, CONFIG.md)::

    vrrp:
      control_socket: /run/pylb/vrrp.sock   # optional: `show vrrp` for the speaker alone
      state_file: /run/pylb/vrrp.json       # optional: JSON snapshot after each change
      health_timeout: 3s                    # no proxy heartbeat this long = unhealthy
      notify_timeout: 10s                   # a notify / track script is killed after it
      instances:
        - name: VI_1
          interface: eth0
          vrid: 51
          priority: 110
          version: 3
          advert_interval: 1s
          preempt: true
          preempt_delay: 0s
          auth: {type: pass, password: secret12}
          unicast: {src: 192.0.2.1, peers: [192.0.2.2]}
          virtual_ipaddresses: ["192.0.2.100/24"]
          track: {proxy_weight: 50, interfaces: [eth0, {name: eth1, weight: -20}],
                  scripts: [{name: chk, path: /usr/local/bin/chk, interval: 2s,
                             weight: -30, rise: 2, fall: 2, timeout: 1s}]}
          notify: {master: /x.sh, backup: /x.sh, fault: /x.sh, stop: /x.sh}
          garp_master_repeat: 5
          garp_master_delay: 5s
          garp_master_refresh: 0s
      sync_groups:
        - {name: G1, instances: [VI_1, VI_2]}

Durations need a unit (`1s`, `100ms`), as everywhere in pylb.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from pylb.config.durations import DurationError, parse_duration
from pylb.config.errors import ConfigError, Diagnostic, sort_diagnostics
from pylb.config.model import Config
from pylb.vrrp.types import (
    AuthConf,
    InstanceConfig,
    NotifyConf,
    TrackConf,
    TrackInterface,
    TrackScript,
    UnicastConf,
)

TOP_KEYS = (
    "instances",
    "sync_groups",
    "control_socket",
    "state_file",
    "health_timeout",
    "notify_timeout",
)
INSTANCE_KEYS = (
    "name",
    "interface",
    "vrid",
    "priority",
    "version",
    "advert_interval",
    "preempt",
    "preempt_delay",
    "auth",
    "unicast",
    "virtual_ipaddresses",
    "track",
    "notify",
    "lower_prio_no_advert",
    "garp_master_repeat",
    "garp_master_delay",
    "garp_master_refresh",
)
AUTH_KEYS = ("type", "password")
UNICAST_KEYS = ("src", "peers")
TRACK_KEYS = ("proxy_weight", "interfaces", "scripts")
TRACK_IF_KEYS = ("name", "weight")
SCRIPT_KEYS = ("name", "path", "interval", "weight", "rise", "fall", "timeout")
NOTIFY_KEYS = ("master", "backup", "fault", "stop")
GROUP_KEYS = ("name", "instances")

DEFAULT_HEALTH_TIMEOUT = 3.0
DEFAULT_NOTIFY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class SyncGroup:
    """keepalived `vrrp_sync_group`: instances that change state together."""

    name: str
    instances: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VrrpConfig:
    """Everything the speaker process needs; built by `build_vrrp`."""

    instances: tuple[InstanceConfig, ...]
    sync_groups: tuple[SyncGroup, ...] = ()
    control_socket: str | None = None
    state_file: str | None = None
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    notify_timeout: float = DEFAULT_NOTIFY_TIMEOUT
    source: str = "<memory>"

    def instance(self, name: str) -> InstanceConfig:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def group_of(self, name: str) -> SyncGroup | None:
        for g in self.sync_groups:
            if name in g.instances:
                return g
        return None


# ------------------------------------------------------------------------- positions


class Positions:
    """Key path -> (line, col) of values and keys in a YAML file (1-based)."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, int]] = {}
        self.keys: dict[str, tuple[int, int]] = {}

    @classmethod
    def from_text(cls, text: str) -> Positions:
        pos = cls()
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            return pos
        if isinstance(root, MappingNode):
            pos._walk(root, "")
        return pos

    @classmethod
    def from_node(cls, root: Node | None) -> Positions:
        """From a composed document (the loader's own node tree: no second parse).
        Nodes without a mark (a config built from a dict) leave the map empty."""
        pos = cls()
        if isinstance(root, MappingNode):
            try:
                pos._walk(root, "")
            except AttributeError:  # represented from a dict: no start_mark
                return cls()
        return pos

    @classmethod
    def from_file(cls, path: str) -> Positions:
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_text(f.read())
        except (OSError, UnicodeDecodeError):
            return cls()

    def _walk(self, node: Node, path: str) -> None:
        if isinstance(node, MappingNode):
            for knode, vnode in node.value:
                key = str(getattr(knode, "value", ""))
                kpath = f"{path}.{key}" if path else key
                self.keys.setdefault(kpath, _mark(knode))
                self.values.setdefault(kpath, _mark(vnode))
                self._walk(vnode, kpath)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                ipath = f"{path}[{i}]"
                self.values.setdefault(ipath, _mark(item))
                self._walk(item, ipath)

    def find(self, path: str, *, key: bool = False) -> tuple[int, int]:
        """Position of `path`, else of its nearest ancestor written in the file."""
        probe = path
        while probe:
            first, second = (self.keys, self.values) if key else (self.values, self.keys)
            if probe in first:
                return first[probe]
            if probe in second:
                return second[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return (0, 0)


def _mark(node: Node) -> tuple[int, int]:
    m = node.start_mark
    return (m.line + 1, m.column + 1)


# --------------------------------------------------------------------------- checker


class _Ctx:
    __slots__ = ("diags", "pos", "source")

    def __init__(self, source: str, pos: Positions) -> None:
        self.source = source
        self.pos = pos
        self.diags: list[Diagnostic] = []

    def error(self, path: str, message: str, *, key: bool = False) -> None:
        line, col = self.pos.find(path, key=key)
        self.diags.append(Diagnostic(self.source, line, col, "error", path, message))

    def warn(self, path: str, message: str) -> None:
        line, col = self.pos.find(path)
        self.diags.append(Diagnostic(self.source, line, col, "warning", path, message))

    # ---- shape helpers: each returns the value or None after reporting
    def mapping(self, value: Any, path: str, allowed: Sequence[str]) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path, f"must be a mapping, got {_kind(value)}")
            return None
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.error(path, f"a key must be a string, got {_kind(k)}")
                continue
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
                hint = (
                    f", did you mean {close[0]!r}?"
                    if close
                    else f" (known keys: {', '.join(allowed)})"
                )
                self.error(f"{path}.{k}", f"unknown key {k!r}{hint}", key=True)
                continue
            out[k] = v
        return out

    def list(self, value: Any, path: str) -> list[Any] | None:
        if value is None:
            return []
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            self.error(path, f"expected a list, got {_kind(value)}")
            return None
        return list(value)

    def string(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str) or not value:
            self.error(path, f"expected a non-empty string, got {_kind(value)}")
            return None
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer {lo}..{hi}, got {_kind(value)}")
            return None
        if not lo <= value <= hi:
            self.error(path, f"must be {lo}..{hi}, got {value}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {_kind(value)}")
            return None
        return value

    def duration(self, value: Any, path: str) -> float | None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.error(path, f"duration {value!r} has no unit: write e.g. {value}s or {value}ms")
            return None
        try:
            return parse_duration(value)
        except DurationError as e:
            self.error(path, str(e))
            return None

    def ip(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            self.error(path, f"expected an IP address, got {_kind(value)}")
            return None
        try:
            return ipaddress.ip_address(value.strip())
        except ValueError:
            self.error(path, f"{value!r} is not an IP address")
            return None


def _kind(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean {v!r}"
    if isinstance(v, int):
        return f"an integer {v!r}"
    if isinstance(v, float):
        return f"a number {v!r}"
    if isinstance(v, str):
        return f"a string {v!r}"
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, list | tuple):
        return "a list"
    return type(v).__name__


def _instance(ctx: _Ctx, raw: Any, path: str) -> InstanceConfig | None:
    m = ctx.mapping(raw, path, INSTANCE_KEYS)
    if m is None:
        return None
    n_errors = len(ctx.diags)
    kw: dict[str, Any] = {}
    for req in ("name", "interface", "vrid", "virtual_ipaddresses"):
        if req not in m:
            ctx.error(path, f"missing required key {req!r}")
    if "name" in m:
        kw["name"] = ctx.string(m["name"], f"{path}.name")
    if "interface" in m:
        kw["interface"] = ctx.string(m["interface"], f"{path}.interface")
    if "vrid" in m:
        kw["vrid"] = ctx.integer(m["vrid"], f"{path}.vrid", 1, 255)
    if "priority" in m:
        kw["priority"] = ctx.integer(m["priority"], f"{path}.priority", 1, 255)
    if "version" in m:
        v = ctx.integer(m["version"], f"{path}.version", 2, 3)
        kw["version"] = v
    for key in ("advert_interval", "preempt_delay", "garp_master_delay", "garp_master_refresh"):
        if key in m:
            kw[key] = ctx.duration(m[key], f"{path}.{key}")
    for key in ("preempt", "lower_prio_no_advert"):
        if key in m:
            kw[key] = ctx.boolean(m[key], f"{path}.{key}")
    if "garp_master_repeat" in m:
        kw["garp_master_repeat"] = ctx.integer(
            m["garp_master_repeat"], f"{path}.garp_master_repeat", 0, 100
        )
    if "virtual_ipaddresses" in m:
        vpath = f"{path}.virtual_ipaddresses"
        items = ctx.list(m["virtual_ipaddresses"], vpath)
        vips = []
        for i, item in enumerate(items or ()):
            if not isinstance(item, str):
                ctx.error(
                    f"{vpath}[{i}]", f"expected an address like 192.0.2.100/24, got {_kind(item)}"
                )
                continue
            try:
                vips.append(ipaddress.ip_interface(item.strip()))
            except ValueError:
                ctx.error(f"{vpath}[{i}]", f"{item!r} is not an address (ADDR or ADDR/PREFIX)")
        if items is not None and not items:
            ctx.error(vpath, "at least one virtual IP address")
        kw["virtual_ipaddresses"] = tuple(vips)
    if "auth" in m and m["auth"] is not None:
        a = ctx.mapping(m["auth"], f"{path}.auth", AUTH_KEYS)
        if a is not None:
            atype = a.get("type", "pass")
            if atype != "pass":
                ctx.error(
                    f"{path}.auth.type", f"auth type {atype!r}: only 'pass' (keepalived PASS)"
                )
            pw = ctx.string(a.get("password"), f"{path}.auth.password")
            if pw is not None and atype == "pass":
                try:
                    kw["auth"] = AuthConf(pw)
                except ValueError as e:
                    ctx.error(f"{path}.auth.password", str(e))
    if "unicast" in m and m["unicast"] is not None:
        upath = f"{path}.unicast"
        u = ctx.mapping(m["unicast"], upath, UNICAST_KEYS)
        if u is not None:
            src = ctx.ip(u.get("src"), f"{upath}.src")
            peers = [
                ctx.ip(p, f"{upath}.peers[{i}]")
                for i, p in enumerate(ctx.list(u.get("peers"), f"{upath}.peers") or ())
            ]
            if src is not None and peers and None not in peers:
                try:
                    kw["unicast"] = UnicastConf(src, tuple(peers))
                except ValueError as e:
                    ctx.error(upath, str(e))
            elif not peers:
                ctx.error(f"{upath}.peers", "at least one unicast peer")
    if "track" in m and m["track"] is not None:
        kw["track"] = _track(ctx, m["track"], f"{path}.track")
    if "notify" in m and m["notify"] is not None:
        npath = f"{path}.notify"
        nm = ctx.mapping(m["notify"], npath, NOTIFY_KEYS)
        if nm is not None:
            nkw = {k: ctx.string(v, f"{npath}.{k}") for k, v in nm.items() if v is not None}
            kw["notify"] = NotifyConf(**nkw)
    if len(ctx.diags) != n_errors or any(v is None for v in kw.values()):
        return None
    try:
        return InstanceConfig(**kw)
    except (ValueError, TypeError) as e:
        # Cross-field rules of InstanceConfig (v2 + IPv6, auth on v3, interval units).
        msg = str(e)
        where = path
        for key in INSTANCE_KEYS:
            if msg.startswith(key) and key in m:
                where = f"{path}.{key}"
                break
        else:
            if "auth" in msg and "auth" in m:
                where = f"{path}.auth"
            elif "IPv6" in msg and "version" in m:
                where = f"{path}.version"
        ctx.error(where, msg)
        return None


def _track(ctx: _Ctx, raw: Any, path: str) -> TrackConf | None:
    t = ctx.mapping(raw, path, TRACK_KEYS)
    if t is None:
        return None
    kw: dict[str, Any] = {}
    if "proxy_weight" in t:
        kw["proxy_weight"] = ctx.integer(t["proxy_weight"], f"{path}.proxy_weight", 0, 254)
    ifaces = []
    for i, item in enumerate(ctx.list(t.get("interfaces"), f"{path}.interfaces") or ()):
        ipath = f"{path}.interfaces[{i}]"
        if isinstance(item, str):
            ifaces.append(TrackInterface(item))
            continue
        im = ctx.mapping(item, ipath, TRACK_IF_KEYS)
        if im is None:
            continue
        name = ctx.string(im.get("name"), f"{ipath}.name")
        weight = ctx.integer(im.get("weight", 0), f"{ipath}.weight", -254, 254)
        if name is not None and weight is not None:
            ifaces.append(TrackInterface(name, weight))
    kw["interfaces"] = tuple(ifaces)
    scripts = []
    for i, item in enumerate(ctx.list(t.get("scripts"), f"{path}.scripts") or ()):
        spath = f"{path}.scripts[{i}]"
        sm = ctx.mapping(item, spath, SCRIPT_KEYS)
        if sm is None:
            continue
        skw: dict[str, Any] = {
            "path": ctx.string(sm.get("path"), f"{spath}.path"),
            "name": sm.get("name") or sm.get("path"),
        }
        if "interval" in sm:
            skw["interval"] = ctx.duration(sm["interval"], f"{spath}.interval")
        if "timeout" in sm:
            skw["timeout"] = ctx.duration(sm["timeout"], f"{spath}.timeout")
        if "weight" in sm:
            skw["weight"] = ctx.integer(sm["weight"], f"{spath}.weight", -254, 254)
        for k in ("rise", "fall"):
            if k in sm:
                skw[k] = ctx.integer(sm[k], f"{spath}.{k}", 1, 1000)
        if any(v is None for v in skw.values()):
            continue
        if skw.get("interval", 1.0) <= 0:
            ctx.error(f"{spath}.interval", "must be more than 0s")
            continue
        scripts.append(TrackScript(**skw))
    kw["scripts"] = tuple(scripts)
    if any(v is None for v in kw.values()):
        return None
    return TrackConf(**kw)


def check_vrrp(
    raw: Any, *, source: str = "<memory>", positions: Positions | None = None
) -> tuple[VrrpConfig | None, list[Diagnostic]]:
    """Never raises: (VrrpConfig or None when there are errors, diagnostics sorted)."""
    if positions is None:
        positions = Positions.from_file(source) if os.path.isfile(source) else Positions()
    ctx = _Ctx(source, positions)
    top = ctx.mapping(raw, "vrrp", TOP_KEYS)
    if top is None:
        return None, ctx.diags
    kw: dict[str, Any] = {"source": source}
    for key in ("control_socket", "state_file"):
        if top.get(key) is not None:
            kw[key] = ctx.string(top[key], f"vrrp.{key}")
    for key in ("health_timeout", "notify_timeout"):
        if key in top:
            kw[key] = ctx.duration(top[key], f"vrrp.{key}")
    instances: list[InstanceConfig] = []
    raw_list = ctx.list(top.get("instances"), "vrrp.instances")
    if raw_list is not None and not raw_list:
        ctx.error("vrrp.instances", "at least one instance (or remove the vrrp section)")
    names: dict[str, int] = {}
    vrids: dict[tuple[str, int, int], int] = {}
    for i, item in enumerate(raw_list or ()):
        path = f"vrrp.instances[{i}]"
        inst = _instance(ctx, item, path)
        if inst is None:
            continue
        if inst.name in names:
            ctx.error(
                f"{path}.name",
                f"duplicate instance name {inst.name!r} (first: instances[{names[inst.name]}])",
            )
            continue
        key = (inst.interface, inst.vrid, int(inst.family))
        if key in vrids:
            ctx.error(
                f"{path}.vrid",
                f"VRID {inst.vrid} is already used on {inst.interface} by instances[{vrids[key]}]",
            )
            continue
        names[inst.name] = i
        vrids[key] = i
        instances.append(inst)
    groups = _groups(ctx, top.get("sync_groups"), names)
    if any(d.is_error for d in ctx.diags) or any(v is None for v in kw.values()):
        return None, sort_diagnostics(ctx.diags)
    return VrrpConfig(tuple(instances), groups, **kw), sort_diagnostics(ctx.diags)


def vrrp_diagnostics(raw: Any, source: str, root: Node | None = None) -> list[Diagnostic]:
    """The `vrrp:` section's diagnostics for the config loader (`pylb check`, `pylb run`,
    reload): the same FILE:LINE:COL as the rest of the file, positions taken from the
    loader's node tree `root` when given."""
    positions = Positions.from_node(root) if root is not None else None
    return check_vrrp(raw, source=source, positions=positions)[1]


def _groups(ctx: _Ctx, raw: Any, names: Mapping[str, int]) -> tuple[SyncGroup, ...]:
    if raw is None:
        return ()
    items: list[tuple[str, Any, str]] = []
    if isinstance(raw, Mapping):  # {G1: [VI_1, VI_2]} (keepalived's shape)
        items = [(str(k), v, f"vrrp.sync_groups.{k}") for k, v in raw.items()]
    else:
        for i, g in enumerate(ctx.list(raw, "vrrp.sync_groups") or ()):
            gpath = f"vrrp.sync_groups[{i}]"
            gm = ctx.mapping(g, gpath, GROUP_KEYS)
            if gm is None:
                continue
            name = ctx.string(gm.get("name"), f"{gpath}.name")
            if name is not None:
                items.append((name, gm.get("instances"), f"{gpath}.instances"))
    out: list[SyncGroup] = []
    member_of: dict[str, str] = {}
    for name, members_raw, mpath in items:
        members = ctx.list(members_raw, mpath)
        if members is None:
            continue
        ok = []
        for j, mname in enumerate(members):
            if mname not in names:
                close = difflib.get_close_matches(str(mname), list(names), n=1)
                hint = f", did you mean {close[0]!r}?" if close else ""
                ctx.error(f"{mpath}[{j}]", f"no instance named {mname!r}{hint}")
            elif mname in member_of:
                ctx.error(
                    f"{mpath}[{j}]", f"{mname!r} is already in sync group {member_of[mname]!r}"
                )
            else:
                member_of[mname] = name
                ok.append(mname)
        if len(members) < 2:
            ctx.warn(mpath, "a sync group of fewer than two instances does nothing")
        out.append(SyncGroup(name, tuple(ok)))
    return tuple(out)


def build_vrrp(
    raw: Any, *, source: str = "<memory>", positions: Positions | None = None
) -> VrrpConfig:
    """Like `check_vrrp`, but raise `ConfigError` (with every diagnostic) on an error."""
    conf, diags = check_vrrp(raw, source=source, positions=positions)
    if conf is None:
        raise ConfigError(diags or [Diagnostic(source, 0, 0, "error", "vrrp", "invalid")])
    return conf


def from_config(config: Config) -> VrrpConfig | None:
    """The speaker's config for a loaded `Config` (None when there is no `vrrp:`)."""
    if config.vrrp is None:
        return None
    return build_vrrp(config.vrrp, source=config.source)


def load_vrrp_file(path: str) -> VrrpConfig:
    """Load a whole pylb config file and build its VRRP part (`python -m ...speaker`).

    The full loader runs first, so a file the master would refuse is refused here too.
    """
    from pylb.config.load import load_config

    config = load_config(path)
    conf = from_config(config)
    if conf is None:
        raise ConfigError([Diagnostic(path, 0, 0, "error", "vrrp", "no vrrp section")])
    return conf
