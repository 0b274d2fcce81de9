"""YAML (or JSON, which is YAML) into the frozen `Config`, with a position on every error.

Why walk the composed node tree instead of `yaml.safe_load`: the node tree keeps where each
key and value was written (``node.start_mark``), keeps duplicate keys (which `safe_load`
silently collapses, last one wins: two listeners with the same name would lose one), and
keeps the YAML type a scalar was *resolved* to, so ``timeout: {connect: 5}`` can be told
apart from ``"5s"`` and refused with a hint. No Python object is ever constructed from a
tag, so the loader is as safe as `safe_load`.

The loader checks shape and types (unknown keys with a suggestion, durations, addresses,
enums) and applies ``defaults``; range and cross-field rules live in `pylb.config.lint`, a
pure function over the model, so configs built from a dict (``pylb demo``) or by the
importers get the same checks. All problems are collected, never only the first.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.representer import SafeRepresenter

from pylb.config.durations import DurationError, parse_duration
from pylb.config.errors import (
    ConfigError,
    Diagnostic,
    Severity,
    SourceMap,
    path_under,
    sort_diagnostics,
)
from pylb.config.model import (
    BALANCES,
    HEALTH_TYPES,
    LOG_FORMATS,
    MODES,
    Address,
    CheckParams,
    Config,
    GlobalConf,
    Health,
    Listen,
    LogConf,
    PeersConf,
    Pos,
    ServerConf,
    StatsAuth,
    StatsConf,
    Timeouts,
)

try:  # libyaml is ~10x faster and accepts tabs as JSON whitespace
    from yaml import CSafeLoader as _Loader

    HAVE_LIBYAML = True
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

    HAVE_LIBYAML = False

__all__ = [
    "ConfigError",
    "Diagnostic",
    "analyze_dict",
    "analyze_text",
    "check_files",
    "config_from_dict",
    "load_config",
    "load_config_text",
    "load_config_with_warnings",
    "parse_address",
]

# ---------------------------------------------------------------------------------------
# The schema: which keys exist where. Kept as data so the unknown-key check, the
# suggestions and docs/config.md all agree.

TOP_KEYS = ("global", "defaults", "listen", "vrrp")
GLOBAL_KEYS = (
    "maxconn",
    "workers",
    "admin_socket",
    "log",
    "stats",
    "hard_stop_after",
    "peers",
    "state_dir",
)
PEERS_KEYS = ("node", "bind", "nodes", "key_file", "interval")
LOG_KEYS = ("target", "level", "format")
SYSLOG_FORMATS = ("rfc5424", "rfc3164")
STATS_KEYS = ("bind", "auth")
STATS_AUTH_KEYS = ("user", "password", "password_file")
TIMEOUT_KEYS = (
    "connect",
    "client",
    "server",
    "http_request",
    "http_keep_alive",
    "queue",
    "tunnel",
)
CHECK_DURATION_KEYS = ("inter", "fastinter", "downinter", "timeout")
CHECK_INT_KEYS = ("rise", "fall")
CHECK_KEYS = ("inter", "fastinter", "downinter", "rise", "fall", "timeout")
# listen-level scalar keys that `defaults` may also set
INHERITABLE_KEYS = (
    "mode",
    "balance",
    "retries",
    "redispatch",
    "forwardfor",
    "maxconn",
    "critical",
    "failback",
    "allbackups",
    "log_format",
)
DEFAULTS_KEYS = (*INHERITABLE_KEYS, "timeout", "check")
LISTEN_KEYS = ("bind", *INHERITABLE_KEYS, "timeout", "health", "servers")
HEALTH_HTTP_KEYS = ("method", "path", "host", "expect")
HEALTH_AUTH_KEYS = ("user", "password", "password_file")
HEALTH_DB_KEYS = ("available_when_donor", "available_when_readonly")
HEALTH_KEYS = ("type", *HEALTH_HTTP_KEYS, *HEALTH_AUTH_KEYS, *HEALTH_DB_KEYS, *CHECK_KEYS)
# which type-specific health keys each check type reads (the others are warned about)
HEALTH_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "tcp": (),
    "http": HEALTH_HTTP_KEYS,
    "clustercheck": HEALTH_HTTP_KEYS,
    "galera": HEALTH_AUTH_KEYS + HEALTH_DB_KEYS,
    "mysql": HEALTH_AUTH_KEYS,
    "amqp": HEALTH_AUTH_KEYS,
}
SERVER_KEYS = (
    "name",
    "address",
    "weight",
    "maxconn",
    "backup",
    "disabled",
    "check",
    "check_port",
    "check_address",
    "priority",
    "inter",
    "fastinter",
    "downinter",
    "rise",
    "fall",
)
# syslog's severity names and usual aliases, as HAProxy and pylb.logsetup accept them
LOG_LEVELS = (
    "debug",
    "info",
    "notice",
    "warning",
    "warn",
    "err",
    "error",
    "crit",
    "critical",
    "alert",
    "emerg",
)

_TAG = "tag:yaml.org,2002:"
T_STR, T_INT, T_FLOAT, T_BOOL, T_NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
T_MERGE = _TAG + "merge"
_DECIMAL_INT = re.compile(r"[-+]?[0-9]{1,18}")
_TRUE = frozenset({"true", "yes", "on"})  # YAML 1.1 spellings, as PyYAML resolves them
_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_EXPECT_PART = re.compile(r"\s*([0-9]{3})\s*(?:-\s*([0-9]{3})\s*)?")
_HTTP_TOKEN = re.compile(r"[A-Z]{1,20}")


class _Bad:
    """A value that failed to convert: already reported, use the default and go on."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<bad>"


BAD: Any = _Bad()


# ---------------------------------------------------------------------------------------
# Addresses


def parse_address(text: str, *, bind: bool, allow_port_zero: bool = False) -> Address:
    """``"192.0.2.1:80"``, ``"[2001:db8::1]:80"``, ``"db1.example:3306"`` -> Address.

    A bind address must be an IP literal, or ``*:PORT`` / ``:PORT`` (all IPv4 addresses) or
    ``:::PORT`` / ``[::]:PORT`` (all addresses): resolving names at bind time makes the
    listener depend on DNS at boot. Server addresses may be host names. Raises ValueError
    with the precise reason.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty address: write HOST:PORT, e.g. 192.0.2.10:80")
    if s.startswith(":::"):
        host, port_text = "::", s[3:]
    elif s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise ValueError(f"address {s!r}: missing ']' after the IPv6 address")
        host, rest = s[1:close], s[close + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"address {s!r}: missing ':PORT' after ']'")
        port_text = rest[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"address {s!r}: {host!r} is not an IPv6 address") from None
    else:
        if ":" not in s:
            raise ValueError(f"address {s!r} has no port: write HOST:PORT, e.g. {s}:80")
        if s.count(":") > 1:
            raise ValueError(
                f"address {s!r}: an IPv6 address needs brackets, e.g. [2001:db8::1]:80"
            )
        host, port_text = s.split(":", 1)
        host = "0.0.0.0" if host in ("", "*") else _check_host(host, s, bind=bind)
    if not _PORT.fullmatch(port_text):
        raise ValueError(f"address {s!r}: port {port_text!r} is not a number")
    port = int(port_text)  # safe: 1-5 digits by the regex above
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"address {s!r}: port {port} is out of range {lowest}..65535")
    return Address(host, port)


def _check_host(host: str, whole: str, *, bind: bool) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if _DOTTED_NUMBERS.fullmatch(host):
        raise ValueError(f"address {whole!r}: {host!r} is not a valid IPv4 address")
    if bind:
        raise ValueError(
            f"bind address {whole!r}: {host!r} is not an IP address "
            "(bind to an IP literal, or *:PORT for all addresses)"
        )
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"address {whole!r}: {host!r} is not a valid host name")
    return host


# ---------------------------------------------------------------------------------------
# The walker's context


@dataclass(slots=True)
class _Ctx:
    source: str
    smap: SourceMap
    diags: list[Diagnostic]
    bad: list[str]  # paths with a loader error: lint findings about them are noise
    allow_port_zero: bool = False

    def pos(self, node: Node | None) -> Pos:
        mark = getattr(node, "start_mark", None)
        if mark is None:
            return Pos(self.source, 0, 0)
        return Pos(self.source, mark.line + 1, mark.column + 1)

    def report(
        self,
        severity: Severity,
        node: Node | None,
        path: str,
        message: str,
        bad_path: str | None = None,
    ) -> None:
        p = self.pos(node)
        self.diags.append(Diagnostic(self.source, p.line, p.col, severity, path, message))
        if severity == "error":
            self.bad.append(path if bad_path is None else bad_path)

    def error(self, node: Node | None, path: str, message: str, bad_path: str | None = None) -> Any:
        """Report at `node`; `bad_path` narrows which lint findings become noise
        (an unknown key is reported on its mapping but taints only itself)."""
        self.report("error", node, path, message, bad_path)
        return BAD

    def warn(self, node: Node | None, path: str, message: str) -> None:
        self.report("warning", node, path, message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_null(node: Node) -> bool:
    """`timeout:` with nothing under it: an empty section, not an error."""
    return isinstance(node, ScalarNode) and node.tag == T_NULL


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == T_NULL:
        return "nothing (null)"
    if not node.tag.startswith(_TAG):
        return f"a value tagged {node.tag}"
    kind = {T_INT: "an integer", T_FLOAT: "a number", T_BOOL: "a boolean"}.get(node.tag, "")
    return f"{kind or 'a string'} {node.value!r}"


def _mapping(
    ctx: _Ctx, node: Node, path: str, allowed: Sequence[str] | None
) -> dict[str, tuple[Node, Node]] | None:
    """Check a mapping's keys (strings, no duplicates, known) and return them by name.

    Records each key's and value's position in the source map. ``<<`` merge keys are
    honoured like safe_load does; only keys written in this mapping count as duplicates.
    """
    pairs = _pairs(ctx, node, path, allowed)
    if pairs is None:
        return None
    return {key: (knode, vnode) for key, knode, vnode in pairs}


def _pairs(
    ctx: _Ctx,
    node: Node,
    path: str,
    allowed: Sequence[str] | None,
    *,
    report_duplicates: bool = True,
) -> list[tuple[str, Node, Node]] | None:
    """The (key, key node, value node) entries of a mapping, duplicates included."""
    if not isinstance(node, MappingNode):
        where = "must" if path else "the document must"
        ctx.error(node, path, f"{where} be a mapping, got {_kind(node)}")
        return None
    seen: dict[str, Node] = {}
    for knode, _ in node.value:
        if knode.tag == T_MERGE:
            continue
        if not isinstance(knode, ScalarNode):
            ctx.error(knode, path, f"a key must be a plain string, got {_kind(knode)}")
            continue
        first = seen.get(knode.value)
        if first is not None:
            if report_duplicates:
                where = ctx.pos(first)
                at = f" (first at line {where.line})" if where.line else ""
                ctx.error(knode, _join(path, knode.value), f"duplicate key {knode.value!r}{at}")
        else:
            seen[knode.value] = knode
    try:
        if any(k.tag == T_MERGE for k, _ in node.value):
            SafeConstructor().flatten_mapping(node)
    except ConstructorError as e:
        ctx.error(node, path, f"bad merge key '<<': {e.problem}", bad_path=path + ".<<")
    out: list[tuple[str, Node, Node]] = []
    for knode, vnode in node.value:
        if not isinstance(knode, ScalarNode):
            continue
        key = knode.value
        kpath = _join(path, key)
        if allowed is not None and key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = (
                f", did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(allowed)})"
            )
            ctx.error(knode, path, f"unknown key {key!r}{hint}", bad_path=kpath)
            continue
        out.append((key, knode, vnode))
        ctx.smap.keys[kpath] = ctx.pos(knode)
        ctx.smap.values[kpath] = ctx.pos(vnode)
    return out


def _sequence(ctx: _Ctx, node: Node, path: str, *, scalar_ok: bool = False) -> list[Node] | None:
    """The items of a list (or of one scalar when `scalar_ok`); None after reporting.

    The list is then marked partial: "no servers" about a list that was not even a list
    would be noise."""
    if isinstance(node, SequenceNode):
        return list(node.value)
    if scalar_ok and isinstance(node, ScalarNode) and node.tag != T_NULL:
        return [node]
    ctx.error(node, path, f"expected a list, got {_kind(node)}")
    ctx.smap.partial.add(path)
    return None


# ---------------------------------------------------------------------------------------
# Scalar converters: each returns the value, or BAD after reporting at the node.


def _scalar(ctx: _Ctx, node: Node, path: str, what: str) -> ScalarNode | None:
    if isinstance(node, ScalarNode) and node.tag in (T_STR, T_INT, T_FLOAT, T_BOOL, T_NULL):
        return node
    if isinstance(node, ScalarNode):
        ctx.error(node, path, f"unsupported tag {node.tag!r}: expected {what}")
    else:
        ctx.error(node, path, f"expected {what}, got {_kind(node)}")
    return None


def _str(ctx: _Ctx, node: Node, path: str, *, optional: bool = False) -> Any:
    sn = _scalar(ctx, node, path, "a string")
    if sn is None:
        return BAD
    if sn.tag == T_NULL:
        return None if optional else ctx.error(node, path, "expected a string, got nothing")
    if sn.value == "" and not optional:
        return ctx.error(node, path, "must not be empty")
    return sn.value  # the text as written: `name: 01` stays "01"


def _int(ctx: _Ctx, node: Node, path: str, *, optional: bool = False) -> Any:
    sn = _scalar(ctx, node, path, "an integer")
    if sn is None:
        return BAD
    if sn.tag == T_NULL and optional:
        return None
    if sn.tag != T_INT or not _DECIMAL_INT.fullmatch(sn.value):
        return ctx.error(node, path, f"expected a decimal integer, got {_kind(sn)}")
    return int(sn.value)  # safe: at most 18 digits, by the regex


def _bool(ctx: _Ctx, node: Node, path: str) -> Any:
    sn = _scalar(ctx, node, path, "true or false")
    if sn is None:
        return BAD
    if sn.tag != T_BOOL:
        return ctx.error(node, path, f"expected true or false, got {_kind(sn)}")
    return sn.value.lower() in _TRUE


def _duration(ctx: _Ctx, node: Node, path: str, *, optional: bool = False) -> Any:
    sn = _scalar(ctx, node, path, "a duration such as 5s")
    if sn is None:
        return BAD
    if sn.tag == T_NULL and optional:
        return None
    if sn.tag in (T_INT, T_FLOAT):
        return ctx.error(
            node,
            path,
            f"duration {sn.value} has no unit: add one, e.g. {sn.value}s or {sn.value}ms "
            "(HAProxy reads a bare number as milliseconds, pylb refuses to guess)",
        )
    if sn.tag != T_STR:
        return ctx.error(node, path, f"expected a duration such as 5s, got {_kind(sn)}")
    try:
        return parse_duration(sn.value)
    except DurationError as e:
        return ctx.error(node, path, str(e))


def _enum(ctx: _Ctx, node: Node, path: str, choices: Sequence[str], what: str) -> Any:
    value = _str(ctx, node, path)
    if value is BAD:
        return BAD
    if value in choices:
        return value
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return ctx.error(
        node, path, f"unknown {what} {value!r} (expected one of: {', '.join(choices)}){hint}"
    )


def _address(ctx: _Ctx, node: Node, path: str, *, bind: bool) -> Any:
    text = _str(ctx, node, path)
    if text is BAD:
        return BAD
    try:
        return parse_address(text, bind=bind, allow_port_zero=ctx.allow_port_zero and bind)
    except ValueError as e:
        return ctx.error(node, path, str(e))


def _expect(ctx: _Ctx, node: Node, path: str) -> Any:
    """``200-399``, ``200``, ``"200,204,300-399"`` -> ((200, 399),) etc."""
    sn = _scalar(ctx, node, path, "status codes such as 200-399")
    if sn is None:
        return BAD
    text = sn.value
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        m = _EXPECT_PART.fullmatch(part)
        if m is None:
            return ctx.error(
                node, path, f"bad status list {text!r}: write e.g. 200, 200-399 or 200,204,301-302"
            )
        lo = int(m.group(1))  # safe: 3 digits by the regex
        hi = int(m.group(2)) if m.group(2) else lo
        if not (100 <= lo <= hi <= 599):
            return ctx.error(
                node, path, f"bad status range {part.strip()!r}: codes are 100..599, low-high"
            )
        ranges.append((lo, hi))
    return tuple(ranges)


# ---------------------------------------------------------------------------------------
# Sections

# A "layer" holds the settings one section wrote: {"mode": ("http", "defaults.mode"),
# "timeout.connect": (5.0, "defaults.timeout.connect"), "check.rise": (2, ...)}.
Layer = dict[str, tuple[Any, str]]

_INHERITABLE_PARSERS: dict[str, Callable[[_Ctx, Node, str], Any]] = {
    "mode": lambda c, n, p: _enum(c, n, p, MODES, "mode"),
    "balance": lambda c, n, p: _enum(c, n, p, BALANCES, "balance algorithm"),
    "retries": _int,
    "redispatch": _bool,
    "forwardfor": _bool,
    "maxconn": lambda c, n, p: _int(c, n, p, optional=True),
    "critical": _bool,
    "failback": _bool,
    "allbackups": _bool,
    "log_format": lambda c, n, p: _enum(c, n, p, LOG_FORMATS, "log format"),
}


def _layer(ctx: _Ctx, entries: Mapping[str, tuple[Node, Node]], path: str) -> Layer:
    layer: Layer = {}
    for key, parse in _INHERITABLE_PARSERS.items():
        if key in entries:
            kpath = _join(path, key)
            value = parse(ctx, entries[key][1], kpath)
            if value is not BAD:
                layer[key] = (value, kpath)
    if "timeout" in entries and not _is_null(entries["timeout"][1]):
        tpath = _join(path, "timeout")
        tmap = _mapping(ctx, entries["timeout"][1], tpath, TIMEOUT_KEYS) or {}
        for key, (_, vnode) in tmap.items():
            value = _duration(ctx, vnode, _join(tpath, key))
            if value is not BAD:
                layer["timeout." + key] = (value, _join(tpath, key))
    if "check" in entries and not _is_null(entries["check"][1]):
        cpath = _join(path, "check")
        cmap = _mapping(ctx, entries["check"][1], cpath, CHECK_KEYS) or {}
        _check_params(ctx, cmap, cpath, layer)
    return layer


def _check_params(
    ctx: _Ctx, entries: Mapping[str, tuple[Node, Node]], path: str, layer: Layer
) -> None:
    for key in CHECK_KEYS:
        if key not in entries:
            continue
        kpath = _join(path, key)
        vnode = entries[key][1]
        if key in CHECK_INT_KEYS:
            value = _int(ctx, vnode, kpath)
        else:
            value = _duration(ctx, vnode, kpath, optional=(key == "timeout"))
        if value is not BAD:
            layer["check." + key] = (value, kpath)


def _global(ctx: _Ctx, node: Node | None) -> GlobalConf:
    if node is None or _is_null(node):
        return GlobalConf()
    entries = _mapping(ctx, node, "global", GLOBAL_KEYS)
    if entries is None:
        return GlobalConf()
    kw: dict[str, Any] = {}
    for key in ("maxconn", "workers"):
        if key in entries:
            kw[key] = _int(ctx, entries[key][1], "global." + key)
    if "admin_socket" in entries:
        kw["admin_socket"] = _str(
            ctx, entries["admin_socket"][1], "global.admin_socket", optional=True
        )
    if "hard_stop_after" in entries:
        kw["hard_stop_after"] = _duration(
            ctx, entries["hard_stop_after"][1], "global.hard_stop_after"
        )
    if "log" in entries:
        kw["log"] = _log(ctx, entries["log"][1])
    if "stats" in entries:
        kw["stats"] = _stats(ctx, *entries["stats"])
    if "peers" in entries and not _is_null(entries["peers"][1]):
        kw["peers"] = _peers(ctx, *entries["peers"])
    if "state_dir" in entries:
        kw["state_dir"] = _str(ctx, entries["state_dir"][1], "global.state_dir", optional=True)
    return GlobalConf(**{k: v for k, v in kw.items() if v is not BAD})


def _log(ctx: _Ctx, node: Node) -> Any:
    path = "global.log"
    if isinstance(node, ScalarNode):  # shorthand: `log: stdout`
        entries: dict[str, tuple[Node, Node]] | None = {"target": (node, node)}
        ctx.smap.values[path + ".target"] = ctx.pos(node)
    else:
        entries = _mapping(ctx, node, path, LOG_KEYS)
    if entries is None:
        return BAD
    kw: dict[str, Any] = {}
    if "target" in entries:
        vnode = entries["target"][1]
        target = _str(ctx, vnode, path + ".target")
        if target is not BAD:
            problem = _log_target_problem(target)
            if problem:
                target = ctx.error(vnode, path + ".target", problem)
        kw["target"] = target
    if "level" in entries:
        kw["level"] = _enum(ctx, entries["level"][1], path + ".level", LOG_LEVELS, "log level")
    if "format" in entries:
        kw["format"] = _enum(
            ctx, entries["format"][1], path + ".format", SYSLOG_FORMATS, "syslog format"
        )
    return LogConf(**{k: v for k, v in kw.items() if v is not BAD})


def _log_target_problem(target: str) -> str | None:
    """Why `target` is not a log destination pylb.logsetup can open, or None."""
    if target in ("stdout", "stderr", "none"):
        return None
    if target.startswith("file:"):
        if target[5:].startswith("/"):
            return None
        return f"log target {target!r}: file: needs an absolute path, e.g. file:/var/log/pylb.log"
    if target.startswith("syslog:"):
        rest = target[7:]
        if rest.startswith("/"):
            return None
        if rest.startswith("udp:"):
            try:
                parse_address(rest[4:], bind=False)
            except ValueError as e:
                return f"log target {target!r}: {e}"
            return None
        return f"log target {target!r}: write syslog:/dev/log or syslog:udp:HOST:PORT"
    return (
        f"unknown log target {target!r} (expected stdout, stderr, none, "
        "file:/path, syslog:/dev/log or syslog:udp:HOST:PORT)"
    )


def _stats(ctx: _Ctx, knode: Node, node: Node) -> Any:
    """`global.stats`; a missing key is reported at the key of the section lacking it."""
    path = "global.stats"
    if _is_null(node):
        return None
    entries = _mapping(ctx, node, path, STATS_KEYS)
    if entries is None:
        return BAD
    if "bind" not in entries:
        return ctx.error(knode, path, "stats needs a 'bind' address, e.g. 127.0.0.1:8404")
    bind = _address(ctx, entries["bind"][1], path + ".bind", bind=True)
    auth: Any = None
    if "auth" in entries:
        apath = path + ".auth"
        amap = _mapping(ctx, entries["auth"][1], apath, STATS_AUTH_KEYS)
        if amap is None:
            auth = BAD
        elif "user" not in amap:
            auth = ctx.error(entries["auth"][0], apath, "auth needs a 'user'")
        else:
            user = _str(ctx, amap["user"][1], apath + ".user")
            pw = (
                _str(ctx, amap["password"][1], apath + ".password", optional=True)
                if "password" in amap
                else None
            )
            pwf = (
                _str(ctx, amap["password_file"][1], apath + ".password_file", optional=True)
                if "password_file" in amap
                else None
            )
            if BAD in (user, pw, pwf):
                auth = BAD
            elif pw is None and pwf is None:
                auth = ctx.error(
                    entries["auth"][0], apath, "auth needs 'password_file' (or 'password')"
                )
            elif pw is not None and pwf is not None:
                auth = ctx.error(
                    amap["password"][0],
                    apath + ".password",
                    "give either 'password' or 'password_file', not both",
                )
            else:
                auth = StatsAuth(user=user, password=pw, password_file=pwf)
    if bind is BAD or auth is BAD:
        return BAD
    return StatsConf(bind=bind, auth=auth)


def _peers(ctx: _Ctx, knode: Node, node: Node) -> Any:
    """`global.peers`: {node, bind, nodes: {NAME: "IP:PORT"} or ["IP:PORT", ...],
    key_file, interval}. Peer addresses must be IP literals: they are sent to every
    interval, and a name that stops resolving must not silently end the sync."""
    path = "global.peers"
    entries = _mapping(ctx, node, path, PEERS_KEYS)
    if entries is None:
        return BAD
    if "bind" not in entries:
        return ctx.error(knode, path, "peers needs 'bind' (this node's sync address IP:PORT)")
    kw: dict[str, Any] = {"bind": _address(ctx, entries["bind"][1], path + ".bind", bind=True)}
    if "node" in entries:
        kw["node"] = _str(ctx, entries["node"][1], path + ".node", optional=True)
    if "key_file" in entries:
        kw["key_file"] = _str(ctx, entries["key_file"][1], path + ".key_file", optional=True)
    if "interval" in entries:
        kw["interval"] = _duration(ctx, entries["interval"][1], path + ".interval")
    if "nodes" in entries and not _is_null(entries["nodes"][1]):
        kw["nodes"] = _peer_nodes(ctx, entries["nodes"][1], path + ".nodes")
    if any(v is BAD for v in kw.values()):
        return BAD
    return PeersConf(**kw)


def _peer_nodes(ctx: _Ctx, node: Node, path: str) -> Any:
    named: list[tuple[str, Node, str]] = []  # (name, address node, path)
    if isinstance(node, MappingNode):
        for name, _, vnode in _pairs(ctx, node, path, None) or []:
            named.append((name, vnode, _join(path, name)))
    else:
        items = _sequence(ctx, node, path)
        if items is None:
            return BAD
        for i, item in enumerate(items):
            ipath = f"{path}[{i}]"
            ctx.smap.values[ipath] = ctx.pos(item)
            text = item.value if isinstance(item, ScalarNode) else ""
            named.append((str(text), item, ipath))
    out: list[tuple[str, Address]] = []
    ok = True
    for name, vnode, ipath in named:
        addr = _address(ctx, vnode, ipath, bind=False)
        if addr is BAD:
            ok = False
        elif not addr.is_ip():
            ctx.error(vnode, ipath, f"peer address {addr} must be an IP address, not a name")
            ok = False
        else:
            out.append((name, addr))
    return tuple(out) if ok else BAD


def _binds(ctx: _Ctx, node: Node, path: str) -> tuple[Address, ...]:
    items = _sequence(ctx, node, path, scalar_ok=True)
    if items is None:
        return ()
    out: list[Address] = []
    kept: list[str] = []
    single = not isinstance(node, SequenceNode)
    for i, item in enumerate(items):
        ipath = path if single else f"{path}[{i}]"
        ctx.smap.values[ipath] = ctx.pos(item)
        addr = _address(ctx, item, ipath, bind=True)
        if addr is not BAD:
            out.append(addr)
            kept.append(ipath)
    ctx.smap.items[path] = kept
    if len(kept) < len(items):
        ctx.smap.partial.add(path)
    return tuple(out)


def _server(ctx: _Ctx, node: Node, path: str) -> ServerConf | None:
    entries = _mapping(ctx, node, path, SERVER_KEYS)
    if entries is None:
        return None
    missing = [k for k in ("name", "address") if k not in entries]
    if missing:
        ctx.error(node, path, "server needs " + " and ".join(repr(k) for k in missing))
        return None
    kw: dict[str, Any] = {"pos": ctx.pos(node)}
    parsers: dict[str, Callable[[_Ctx, Node, str], Any]] = {
        "name": _str,
        "address": lambda c, n, p: _address(c, n, p, bind=False),
        "weight": _int,
        "maxconn": lambda c, n, p: _int(c, n, p, optional=True),
        "backup": _bool,
        "disabled": _bool,
        "check": _bool,
        "check_port": lambda c, n, p: _int(c, n, p, optional=True),
        "check_address": lambda c, n, p: _str(c, n, p, optional=True),
        "priority": lambda c, n, p: _int(c, n, p, optional=True),
        "inter": _duration,
        "fastinter": _duration,
        "downinter": _duration,
        "rise": _int,
        "fall": _int,
    }
    ok = True
    for key, (_, vnode) in entries.items():
        value = parsers[key](ctx, vnode, _join(path, key))
        if value is BAD:
            ok = False
        else:
            kw[key] = value
    ca = kw.get("check_address")
    if ca is not None:
        try:
            kw["check_address"] = str(ipaddress.ip_address(ca))
        except ValueError:
            if not _HOSTNAME.fullmatch(ca) or _DOTTED_NUMBERS.fullmatch(ca):
                ctx.error(
                    entries["check_address"][1],
                    path + ".check_address",
                    f"check_address {ca!r} is not an IP address or host name",
                )
                ok = False
    return ServerConf(**kw) if ok else None


def _health(ctx: _Ctx, node: Node, path: str, base: Layer) -> Health | None:
    entries = _mapping(ctx, node, path, HEALTH_KEYS)
    if entries is None:
        return None
    htype = "tcp"
    if "type" in entries:
        htype = _enum(ctx, entries["type"][1], path + ".type", HEALTH_TYPES, "health type")
        if htype is BAD:
            return None
    used = HEALTH_TYPE_KEYS[htype]
    for key, (knode, _) in entries.items():
        if key in HEALTH_KEYS[1:] and key not in CHECK_KEYS and key not in used:
            ctx.warn(knode, _join(path, key), f"{key!r} has no effect with health type {htype}")
    own: Layer = {}
    _check_params(ctx, entries, path, own)
    params: dict[str, Any] = {}
    for key in CHECK_KEYS:
        got = own.get("check." + key) or base.get("check." + key)
        if got is not None:
            params[key] = got[0]
            if got[1] != _join(path, key):
                ctx.smap.origins[_join(path, key)] = got[1]
    kw: dict[str, Any] = {"type": htype, "params": CheckParams(**params)}
    if "method" in entries:
        method = _str(ctx, entries["method"][1], path + ".method")
        if method is not BAD and not _HTTP_TOKEN.fullmatch(method):
            method = ctx.error(
                entries["method"][1],
                path + ".method",
                f"bad HTTP method {method!r}: write it in capitals, e.g. GET",
            )
        kw["method"] = method
    for key in ("path", "host", "user", "password", "password_file"):
        if key in entries:
            kw[key] = _str(ctx, entries[key][1], _join(path, key), optional=(key != "path"))
    for key in HEALTH_DB_KEYS:
        if key in entries:
            kw[key] = _bool(ctx, entries[key][1], _join(path, key))
    if "expect" in entries:
        kw["expect"] = _expect(ctx, entries["expect"][1], path + ".expect")
    if htype == "none":
        return None
    return Health(**{k: v for k, v in kw.items() if v is not BAD})


def _listen(ctx: _Ctx, name: str, knode: Node, node: Node, defaults: Layer) -> Listen | None:
    path = f"listen.{name}"
    entries = _mapping(ctx, node, path, LISTEN_KEYS)
    if entries is None:
        return None
    own = _layer(ctx, entries, path)

    def pick(key: str, fallback: Any) -> Any:
        if key in own:
            return own[key][0]
        if key in defaults:
            ctx.smap.origins[_join(path, key)] = defaults[key][1]
            return defaults[key][0]
        return fallback

    kw: dict[str, Any] = {"name": name, "pos": ctx.pos(knode)}
    for key in INHERITABLE_KEYS:
        kw[key] = pick(key, getattr(_LISTEN_DEFAULTS, key))
    kw["timeout"] = Timeouts(
        **{k: pick("timeout." + k, getattr(_TIMEOUT_DEFAULTS, k)) for k in TIMEOUT_KEYS}
    )
    if kw["mode"] == "tcp" and kw["log_format"] == "httplog":
        # A tcp listener cannot log HTTP fields; HAProxy falls back to tcplog the same way.
        if "log_format" in own:
            ctx.warn(
                entries["log_format"][1],
                path + ".log_format",
                "log_format httplog needs mode http; tcplog is used",
            )
        kw["log_format"] = "tcplog"
    kw["binds"] = _binds(ctx, entries["bind"][1], path + ".bind") if "bind" in entries else ()
    servers: list[ServerConf] = []
    if "servers" in entries:
        spath = path + ".servers"
        items = _sequence(ctx, entries["servers"][1], spath) or []
        kept: list[str] = []
        for i, item in enumerate(items):
            ipath = f"{spath}[{i}]"
            ctx.smap.values[ipath] = ctx.pos(item)
            server = _server(ctx, item, ipath)
            if server is not None:
                servers.append(server)
                kept.append(ipath)
        ctx.smap.items[spath] = kept
        if len(kept) < len(items):
            ctx.smap.partial.add(spath)
    kw["servers"] = tuple(servers)
    if "health" in entries:
        kw["health"] = _health(ctx, entries["health"][1], path + ".health", defaults)
    return Listen(**kw)


_LISTEN_DEFAULTS = Listen(name="", binds=(), servers=())
_TIMEOUT_DEFAULTS = Timeouts()


def _vrrp(ctx: _Ctx, node: Node) -> Any:
    """Kept raw for the VRRP subsystem; only duplicate keys are caught here (safe_load
    would drop one silently)."""
    if _is_null(node):
        return None
    if not isinstance(node, MappingNode):
        return ctx.error(node, "vrrp", f"must be a mapping, got {_kind(node)}")
    seen: set[int] = set()

    def walk(n: Node, path: str) -> None:
        if id(n) in seen:  # an alias: checked once (also defeats "billion laughs")
            return
        seen.add(id(n))
        if isinstance(n, MappingNode):
            entries = _mapping(ctx, n, path, None) or {}
            for key, (_, v) in entries.items():
                walk(v, _join(path, key))
        elif isinstance(n, SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, f"{path}[{i}]")

    walk(node, "vrrp")
    try:
        data = SafeConstructor().construct_document(node)
    except ConstructorError as e:
        return ctx.error(node, "vrrp", f"cannot read vrrp: {e.problem}")
    return data


# ---------------------------------------------------------------------------------------
# Entry points


def _file_problem(path: str, *, nonempty: bool = False) -> str | None:
    """Why a secret file cannot be used (None: it can). Read like the consumers read it."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory"
    except PermissionError:
        return "permission denied"
    except OSError as e:
        return e.strerror or str(e)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8"
    if nonempty and not data.strip():
        return "is empty"
    return None


def check_files(config: Config, smap: SourceMap | None = None) -> list[Diagnostic]:
    """Errors for the secret files `config` names that cannot be read now: the galera /
    mysql check's `password_file`, the stats `password_file`, the peers `key_file`.
    `pylb run` and a reload run it (a worker would otherwise fail after the fork, in a
    restart loop); `pylb check` does not, so a config can be checked on a machine
    without the secrets."""
    smap = smap if smap is not None else SourceMap(config.source)
    out: list[Diagnostic] = []

    def need(path: str, file: str | None, what: str, *, nonempty: bool = False) -> None:
        if file is None:
            return
        problem = _file_problem(file, nonempty=nonempty)
        if problem is not None:
            out.append(smap.diag("error", path, f"{what} {file}: {problem}"))

    for lst in config.listens:
        h = lst.health
        if h is not None and h.type in ("galera", "mysql", "amqp"):
            need(f"listen.{lst.name}.health.password_file", h.password_file, "password_file")
    g = config.global_
    if g.stats is not None and g.stats.auth is not None:
        need("global.stats.auth.password_file", g.stats.auth.password_file, "password_file")
    if g.peers is not None:
        need("global.peers.key_file", g.peers.key_file, "key_file", nonempty=True)
    return out


def _analyze_node(
    root: Node | None,
    source: str,
    *,
    allow_port_zero: bool = False,
    files: bool = False,
) -> tuple[Config | None, list[Diagnostic], SourceMap]:
    from pylb.config.lint import lint  # lint imports errors/model only; no cycle at import

    smap = SourceMap(source)
    ctx = _Ctx(source, smap, [], [], allow_port_zero)
    if root is None:
        ctx.error(None, "", "the configuration is empty")
        return None, ctx.diags, smap
    top = _mapping(ctx, root, "", TOP_KEYS)
    if top is None:
        return None, ctx.diags, smap
    global_ = _global(ctx, top["global"][1] if "global" in top else None)
    defaults: Layer = {}
    if "defaults" in top:
        dnode = top["defaults"][1]
        if not _is_null(dnode):
            dmap = _mapping(ctx, dnode, "defaults", DEFAULTS_KEYS)
            defaults = _layer(ctx, dmap or {}, "defaults")
    listens: list[Listen] = []
    if "listen" in top:
        lnode = top["listen"][1]
        if not _is_null(lnode):
            # every entry, duplicates too: each one's errors are reported, and the lint
            # names the duplicate listener (safe_load would silently keep the last)
            lpairs = _pairs(ctx, lnode, "listen", None, report_duplicates=False) or []
            seen: set[str] = set()
            for name, knode, vnode in lpairs:
                if name in seen:
                    # the source map has one slot per path: keep the first listener's
                    # positions (the lint checks only the first of duplicate names)
                    ctx.smap, saved = SourceMap(source), ctx.smap
                    lst = _listen(ctx, name, knode, vnode, defaults)
                    ctx.smap = saved
                else:
                    lst = _listen(ctx, name, knode, vnode, defaults)
                seen.add(name)
                if lst is not None:
                    listens.append(lst)
                else:
                    ctx.smap.partial.add("listen")
    vrrp = _vrrp(ctx, top["vrrp"][1]) if "vrrp" in top else None
    config = Config(
        global_=global_,
        listens=tuple(listens),
        vrrp=None if vrrp is BAD else vrrp,
        source=source,
    )
    bad = list(ctx.bad)
    # a bad mode/balance changes what every other rule of the listener means
    bad += [b.rsplit(".", 1)[0] for b in ctx.bad if b.endswith((".mode", ".balance"))]
    for d in lint(config, smap):
        if d.path and any(path_under(d.path, b) for b in bad):
            continue
        ctx.diags.append(d)
    if config.vrrp is not None:  # the VRRP subsystem owns the section's schema (issue 4)
        from pylb.vrrp.config import vrrp_diagnostics

        ctx.diags += vrrp_diagnostics(config.vrrp, source, root)
    if files:
        ctx.diags += check_files(config, smap)
    diags = sort_diagnostics(ctx.diags)
    has_error = any(d.is_error for d in diags)
    return (None if has_error else config), diags, smap


def analyze_text(
    text: str | bytes,
    source: str = "<string>",
    *,
    allow_port_zero: bool = False,
    files: bool = False,
) -> tuple[Config | None, list[Diagnostic]]:
    """Never raises: (Config or None when there are errors, all diagnostics sorted)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, [Diagnostic(source, 0, 0, "error", "", f"not UTF-8 text (byte {e.start})")]
    if not HAVE_LIBYAML and text.lstrip().startswith("{"):  # pragma: no cover
        # JSON allows tabs as whitespace, pure-Python PyYAML does not; inside JSON strings
        # a tab is always escaped, so this keeps every value and every column.
        text = text.replace("\t", " ")
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        msg = e.problem or "YAML syntax error"
        if e.context:
            msg = f"{msg} ({e.context}"
            if e.context_mark is not None and e.context_mark is not mark:
                msg += f" at line {e.context_mark.line + 1}"
            msg += ")"
        return None, [Diagnostic(source, line, col, "error", "", f"YAML: {msg}")]
    except yaml.YAMLError as e:
        return None, [Diagnostic(source, 0, 0, "error", "", f"YAML: {e}")]
    config, diags, _ = _analyze_node(root, source, allow_port_zero=allow_port_zero, files=files)
    return config, diags


def analyze_file(path: str, *, files: bool = False) -> tuple[Config | None, list[Diagnostic]]:
    """Like analyze_text, for a file; an unreadable file is an error naming it.
    `files`: also check the secret files it names (`check_files`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        reason = e.strerror or str(e)
        return None, [Diagnostic(path, 0, 0, "error", "", f"cannot read {path}: {reason}")]
    return analyze_text(data, path, files=files)


def analyze_dict(
    data: Mapping[str, Any], source: str = "<dict>", *, allow_port_zero: bool = False
) -> tuple[Config | None, list[Diagnostic]]:
    """The same checks for a config built in Python; positions are unknown (line 0)."""
    try:
        root = SafeRepresenter(sort_keys=False).represent_data(dict(data))
    except yaml.representer.RepresenterError as e:
        return None, [Diagnostic(source, 0, 0, "error", "", f"cannot represent: {e}")]
    config, diags, _ = _analyze_node(root, source, allow_port_zero=allow_port_zero)
    return config, diags


def _raise_or(config: Config | None, diags: list[Diagnostic]) -> tuple[Config, list[Diagnostic]]:
    if config is None:
        raise ConfigError(diags)
    return config, [d for d in diags if not d.is_error]


def load_config_with_warnings(path: str, *, files: bool = False) -> tuple[Config, list[Diagnostic]]:
    """Load and validate a file; raise ConfigError on any error, return the warnings.
    `files`: the secret files it names must be readable now (`pylb run`, reload)."""
    return _raise_or(*analyze_file(path, files=files))


def load_config(path: str) -> Config:
    """Load and validate a file; raise ConfigError (with every diagnostic) on any error."""
    return load_config_with_warnings(path)[0]


def load_config_text(text: str, source: str = "<string>") -> Config:
    """Load and validate YAML/JSON text; `source` names it in diagnostics."""
    return _raise_or(*analyze_text(text, source))[0]


def config_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", *, allow_port_zero: bool = False
) -> Config:
    """Validate a config written as a Python dict (same shape and strings as the YAML,
    e.g. durations as "5s"). `allow_port_zero` lets tests bind to port 0."""
    return _raise_or(*analyze_dict(data, source, allow_port_zero=allow_port_zero))[0]
