"""Semantic rules over a loaded `Config`: the things a well-typed config can still get wrong.

A pure function of (model, source map): no I/O, no YAML. The loader calls it after building
the model, and anything else that builds a `Config` (``pylb demo``'s dict, the haproxy.cfg
importer) gets the same verdict. Without a source map the positions are unknown (line 0) and
the key paths are derived from the model.

Errors are what would fail or misbehave at run time (a duplicate bind cannot start, a
weight of 300 is not a weight); warnings are legal but probably not meant (every server
disabled, a backup under writer-pin). Every rule runs: all findings are returned at once.
"""

from __future__ import annotations

import re

from pylb.config.errors import Diagnostic, Severity, SourceMap
from pylb.config.model import (
    BALANCES,
    LOG_FORMATS,
    MODES,
    SERVER_CHECK_KEYS,
    Address,
    Config,
    Listen,
)

# `pylb ctl disable server B/S` addresses a server by listener/server: no '/' or spaces.
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_HTTP_CHECKS = ("http", "clustercheck")
MAX_WEIGHT = 256  # HAProxy's range; weight 0 = no new traffic from the balancer
REQUIRED_TIMEOUTS: dict[str, tuple[str, ...]] = {
    # Each bounds a resource a silent peer would hold forever. HAProxy warns when they are
    # missing and treats 0 as "never"; pylb refuses 0.
    "tcp": ("connect", "client", "server", "tunnel"),
    "http": ("connect", "client", "server", "tunnel", "http_request", "http_keep_alive"),
}


class _Linter:
    __slots__ = ("config", "out", "smap")

    def __init__(self, config: Config, smap: SourceMap | None) -> None:
        self.config = config
        self.smap = smap if smap is not None else SourceMap(config.source)
        self.out: list[Diagnostic] = []

    def report(self, severity: Severity, path: str, message: str, *, key: bool = False) -> None:
        self.out.append(self.smap.diag(severity, path, message, key=key))

    def error(self, path: str, message: str, *, key: bool = False) -> None:
        self.report("error", path, message, key=key)

    def warn(self, path: str, message: str, *, key: bool = False) -> None:
        self.report("warning", path, message, key=key)

    def line_of(self, path: str) -> str:
        p = self.smap.pos(self.smap.origin(path))
        return f" (line {p.line})" if p.line else ""


def lint(config: Config, smap: SourceMap | None = None) -> list[Diagnostic]:
    """All semantic findings of `config`, in rule order (callers sort by position)."""
    li = _Linter(config, smap)
    _global(li)
    if not config.listens and not config.vrrp and "listen" not in li.smap.partial:
        li.error("listen", "no listen blocks and no vrrp: nothing to do", key=True)
    names: dict[str, Listen] = {}
    binds: dict[Address, str] = {}
    stats = config.global_.stats
    if stats is not None:
        binds[stats.bind] = "global.stats.bind"
    for lst in config.listens:
        lpath = f"listen.{lst.name}"
        first = names.get(lst.name)
        if first is not None:
            # the source map has one entry per path: use the listeners' own positions
            at = lst.pos if lst.pos is not None else li.smap.pos(lpath, key=True)
            line = f" (first at line {first.pos.line})" if first.pos and first.pos.line else ""
            li.out.append(
                Diagnostic(
                    at.file,
                    at.line,
                    at.col,
                    "error",
                    lpath,
                    f"duplicate listener name {lst.name!r}{line}",
                )
            )
            continue  # its paths are the first one's: its own rules would point there
        names[lst.name] = lst
        _listen(li, lst, lpath, binds)
    _wildcard_overlaps(li, binds)
    return li.out


def _global(li: _Linter) -> None:
    g = li.config.global_
    if g.workers < 1:
        li.error("global.workers", f"must be at least 1, got {g.workers}")
    if g.maxconn < 1:
        li.error("global.maxconn", f"must be at least 1, got {g.maxconn}")
    if g.log.format is not None and not g.log.target.startswith("syslog:"):
        li.warn(
            "global.log.format",
            f"format {g.log.format!r} only applies to syslog targets, not {g.log.target!r}",
        )
    if g.state_dir is not None and not g.state_dir.startswith("/"):
        li.error("global.state_dir", f"must be an absolute path, got {g.state_dir!r}")
    if g.peers is not None:
        _peers(li)


MAX_PEERS_INTERVAL = 60.0  # a claim re-announced less often leaves a lost datagram unrepaired


def _peers(li: _Linter) -> None:
    """`global.peers`: the writer sync between pylb nodes (pylb.galera.peers)."""
    p = li.config.global_.peers
    assert p is not None
    path = "global.peers"
    if p.node is not None and not _NAME.fullmatch(p.node):
        li.error(
            path + ".node", f"node name {p.node!r}: use 1-64 letters, digits, '_', '.', ':' or '-'"
        )
    if p.nodes and p.key_file is None:
        li.error(
            path,
            "peers with nodes need key_file (a shared secret: datagrams are authenticated "
            "with HMAC-SHA256)",
            key=True,
        )
    if p.bind.port == 0:
        li.error(path + ".bind", "peers need a fixed port: the other nodes send to it")
    seen: dict[Address, str] = {}
    names = {name for name, _ in p.nodes}
    for i, (name, addr) in enumerate(p.nodes):
        ipath = _peer_path(li, i, name)
        if p.node is not None and name == p.node:
            li.error(
                ipath, f"{name!r} is this node's own name (global.peers.node): list the others"
            )
        if addr == p.bind:
            li.error(ipath, f"{addr} is this node's own peers bind address: list the others")
        first = seen.get(addr)
        if first is not None:
            li.error(ipath, f"{addr} is listed twice (first at {first})")
        seen[addr] = ipath
    if p.node is None and names and len(names) != len(p.nodes):  # pragma: no cover - mapping keys
        li.error(path + ".nodes", "duplicate node names")
    if not 0 < p.interval <= MAX_PEERS_INTERVAL:
        li.error(path + ".interval", f"must be more than 0s and at most {MAX_PEERS_INTERVAL:g}s")
    if not any(lst.balance == "writer-pin" for lst in li.config.listens):
        li.warn(
            path, "peers only sync the writer of balance writer-pin listeners: none here", key=True
        )


def _peer_path(li: _Linter, index: int, name: str) -> str:
    """`global.peers.nodes.NAME` (mapping form) or `global.peers.nodes[i]` (list form)."""
    named = f"global.peers.nodes.{name}"
    return named if named in li.smap.values else f"global.peers.nodes[{index}]"


def _listen(li: _Linter, lst: Listen, lpath: str, binds: dict[Address, str]) -> None:
    if not _NAME.fullmatch(lst.name):
        li.error(
            lpath,
            f"listener name {lst.name!r}: use 1-64 letters, digits, '_', '.', ':' or '-'",
            key=True,
        )
    if lst.mode not in MODES:
        li.error(lpath + ".mode", f"unknown mode {lst.mode!r}")
        return  # every other rule depends on the mode
    if lst.balance not in BALANCES:
        li.error(lpath + ".balance", f"unknown balance algorithm {lst.balance!r}")
    if lst.log_format not in LOG_FORMATS:
        li.error(lpath + ".log_format", f"unknown log format {lst.log_format!r}")

    # binds
    if not lst.binds and lpath + ".bind" not in li.smap.partial:
        li.error(lpath, 'no bind address: add e.g. bind: ["192.0.2.10:80"]', key=True)
    for i, addr in enumerate(lst.binds):
        bpath = li.smap.item_path(lpath + ".bind", i)
        first = binds.get(addr)
        if first is not None:
            li.error(bpath, f"{addr} is already bound by {first}{li.line_of(first)}")
        else:
            binds[addr] = bpath

    # scalars
    if lst.retries < 0:
        li.error(lpath + ".retries", f"must be 0 or more, got {lst.retries}")
    if lst.maxconn is not None:
        if lst.maxconn < 1:
            li.error(lpath + ".maxconn", f"must be at least 1, got {lst.maxconn}")
        elif lst.maxconn > li.config.global_.maxconn:
            li.warn(
                lpath + ".maxconn",
                f"{lst.maxconn} is above global.maxconn {li.config.global_.maxconn}, "
                "which caps the whole process",
            )
    if lst.balance == "writer-pin" and lst.mode != "tcp":
        li.error(
            lpath + ".balance",
            "writer-pin needs mode tcp (it pins whole connections to one writer node)",
        )
    if lst.failback and lst.balance != "writer-pin":
        li.warn(lpath + ".failback", "failback is only used by balance writer-pin")
    if lst.forwardfor and lst.mode == "tcp":
        li.warn(lpath + ".forwardfor", "forwardfor has no effect in mode tcp")

    # timeouts
    for name in REQUIRED_TIMEOUTS[lst.mode]:
        if getattr(lst.timeout, name) <= 0:
            which = "mode http" if name.startswith("http_") else "every mode"
            li.error(
                f"{lpath}.timeout.{name}",
                f"timeout {name} must be more than 0s (required in {which})",
            )

    _servers(li, lst, lpath)
    _health(li, lst, lpath)


def _servers(li: _Linter, lst: Listen, lpath: str) -> None:
    spath = lpath + ".servers"
    complete = spath not in li.smap.partial
    if not lst.servers:
        if complete:
            li.error(spath, "no servers: add at least one under servers:", key=True)
        return
    names: dict[str, str] = {}
    addresses: dict[Address, str] = {}
    for i, srv in enumerate(lst.servers):
        path = li.smap.item_path(spath, i)
        if not _NAME.fullmatch(srv.name):
            li.error(
                path + ".name",
                f"server name {srv.name!r}: use 1-64 letters, digits, '_', '.', ':' or '-'",
            )
        if srv.name in names:
            first = names[srv.name]
            li.error(
                path + ".name",
                f"duplicate server name {srv.name!r} in listen {lst.name} "
                f"(first at {first}{li.line_of(first + '.name')})",
            )
        else:
            names[srv.name] = path
        if srv.address in addresses:
            li.warn(path + ".address", f"same address as {addresses[srv.address]}")
        else:
            addresses[srv.address] = path
        if not 0 <= srv.weight <= MAX_WEIGHT:
            li.error(path + ".weight", f"weight {srv.weight} is out of range 0..{MAX_WEIGHT}")
        if srv.maxconn is not None and srv.maxconn < 1:
            li.error(path + ".maxconn", f"must be at least 1, got {srv.maxconn}")
        if srv.check_port is not None and not 1 <= srv.check_port <= 65535:
            li.error(path + ".check_port", f"port {srv.check_port} is out of range 1..65535")
        if srv.priority is not None:
            if srv.priority < 0:
                li.error(path + ".priority", f"must be 0 or more, got {srv.priority}")
            if lst.balance != "writer-pin":
                li.warn(path + ".priority", "priority is only used by balance writer-pin")
        if lst.health is None and (srv.check_port is not None or srv.check_address is not None):
            li.warn(path, "check_port/check_address have no effect: the listener has no health")
        for name in SERVER_CHECK_KEYS:
            value = getattr(srv, name)
            if value is None:
                continue
            if lst.health is None:
                li.warn(f"{path}.{name}", f"{name} has no effect: the listener has no health")
            elif name in ("rise", "fall") and value < 1:
                li.error(f"{path}.{name}", f"must be at least 1, got {value}")
            elif name not in ("rise", "fall") and value <= 0:
                li.error(f"{path}.{name}", "must be more than 0s")
        if srv.backup and lst.balance == "writer-pin":
            li.warn(
                path + ".backup",
                "backup under writer-pin: it becomes writer only when no active server is "
                "up; order writers with priority instead",
            )
    if not complete:
        return
    enabled = [s for s in lst.servers if not s.disabled]
    active = [s for s in enabled if not s.backup]
    if not enabled:
        li.warn(lpath, "every server is disabled: all requests will get 503", key=True)
    elif not active:
        li.warn(lpath, "every enabled server is a backup", key=True)
    elif all(s.weight == 0 for s in active):
        li.warn(lpath, "every active server has weight 0: only backups get traffic", key=True)


def _health(li: _Linter, lst: Listen, lpath: str) -> None:
    h = lst.health
    hpath = lpath + ".health"
    if h is None:
        if lst.critical:
            li.warn(
                lpath + ".critical",
                "critical without health: VRRP never sees this listener's servers fail",
            )
        return
    if h.type in _HTTP_CHECKS:
        if not h.path.startswith("/"):
            li.error(hpath + ".path", f"path {h.path!r} must start with '/'")
        for lo, hi in h.expect:
            if not 100 <= lo <= hi <= 599:
                li.error(hpath + ".expect", f"bad status range {lo}-{hi}")
    if h.password is not None and h.password_file is not None:
        li.error(hpath + ".password", "give either password or password_file, not both")
    p = h.params
    for name in ("rise", "fall"):
        value = getattr(p, name)
        if value < 1:
            li.error(f"{hpath}.{name}", f"must be at least 1, got {value}")
    for name in ("inter", "fastinter", "downinter"):
        if getattr(p, name) <= 0:
            li.error(f"{hpath}.{name}", "must be more than 0s")
    if p.timeout is not None:
        if p.timeout <= 0:
            li.error(hpath + ".timeout", "must be more than 0s")
        elif p.timeout > p.inter:
            li.warn(
                hpath + ".timeout",
                "check timeout is longer than inter: a slow server is checked again "
                "before the previous check gave up",
            )


def _wildcard_overlaps(li: _Linter, binds: dict[Address, str]) -> None:
    """0.0.0.0:P next to 192.0.2.1:P binds with SO_REUSEPORT but the specific one wins:
    legal, and almost always a leftover."""
    wild_v4 = {a.port: p for a, p in binds.items() if a.host == "0.0.0.0"}
    wild_v6 = {a.port: p for a, p in binds.items() if a.host == "::"}
    for addr, path in binds.items():
        if addr.host in ("0.0.0.0", "::"):
            continue
        wild = wild_v6.get(addr.port) or (None if addr.family_is_v6 else wild_v4.get(addr.port))
        if wild is not None:
            li.warn(path, f"{addr} overlaps the wildcard bind {wild}{li.line_of(wild)}")
