"""The typed configuration model: the single source of truth once a file is loaded.

Everything here is frozen: a running worker holds one `Config` and a reload builds a new
one, so no code path can see a half-applied change. Runtime state (server up/down,
counters) lives elsewhere (`pylb.proxy.backend`), never in these objects.

All durations are float seconds. Defaults carry the reason they have the value they have.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Literal

Mode = Literal["http", "tcp"]
BalanceName = Literal["roundrobin", "leastconn", "source", "first", "writer-pin"]
HealthType = Literal["none", "tcp", "http", "galera", "clustercheck", "mysql", "amqp"]
LogFormat = Literal["httplog", "tcplog", "json"]

MODES: tuple[str, ...] = ("http", "tcp")
BALANCES: tuple[str, ...] = ("roundrobin", "leastconn", "source", "first", "writer-pin")
HEALTH_TYPES: tuple[str, ...] = ("none", "tcp", "http", "galera", "clustercheck", "mysql", "amqp")
LOG_FORMATS: tuple[str, ...] = ("httplog", "tcplog", "json")
# check timing keys a server may override (HAProxy's per-server `inter`, `rise`, ...)
SERVER_CHECK_KEYS: tuple[str, ...] = ("inter", "fastinter", "downinter", "rise", "fall")


@dataclass(frozen=True, slots=True)
class Pos:
    """Where a value was written: reported as FILE:LINE:COL (1-based, like compilers)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Address:
    """host:port; host is a literal IP (v4 or v6, no brackets) or a name for servers."""

    host: str
    port: int

    @property
    def family_is_v6(self) -> bool:
        return ":" in self.host

    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    # HAProxy's and MCP's values where they have one; each bounds a resource held by a peer.
    connect: float = 5.0  # a crashed backend sends no RST: the connect must give up by itself
    client: float = 60.0  # idle client inside a request/response or a TCP session
    server: float = 60.0  # idle server while we wait for / stream its response
    http_request: float = 10.0  # whole request head (slowloris bound)
    http_keep_alive: float = 10.0  # idle client between two requests
    queue: float = 30.0  # a request waiting for a free server slot
    tunnel: float = 3600.0  # idle WebSocket / TCP tunnel after an upgrade


@dataclass(frozen=True, slots=True)
class CheckParams:
    # HAProxy's defaults are inter 2s rise 2 fall 3; MCP keeps them.
    inter: float = 2.0
    fastinter: float = 0.5  # while a transition is pending (between 1 and rise/fall-1 results)
    downinter: float = 5.0  # while down: don't hammer a dead node
    rise: int = 2
    fall: int = 3
    timeout: float | None = None  # per check; None = min(inter, timeout.connect)


@dataclass(frozen=True, slots=True)
class Health:
    type: str = "tcp"
    params: CheckParams = field(default_factory=CheckParams)
    # http / clustercheck
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expect: tuple[tuple[int, int], ...] = ((200, 399),)  # inclusive status ranges
    # galera / mysql
    user: str | None = None
    password: str | None = None
    password_file: str | None = None
    available_when_donor: bool = False
    available_when_readonly: bool = False


@dataclass(frozen=True, slots=True)
class ServerConf:
    name: str
    address: Address
    weight: int = 1  # 0..256 like HAProxy; 0 = no new traffic from the balancer
    maxconn: int | None = None  # None = unlimited
    backup: bool = False
    disabled: bool = False  # administratively in maintenance from the start
    check: bool = True
    check_port: int | None = None
    check_address: str | None = None
    priority: int | None = None  # writer-pin order; lower first; None = configured order
    # Per-server check timing, as on HAProxy's `server ... check inter 5s rise 3`;
    # None inherits the listener's health / defaults.check value.
    inter: float | None = None
    fastinter: float | None = None
    downinter: float | None = None
    rise: int | None = None
    fall: int | None = None
    pos: Pos | None = field(default=None, compare=False)

    def check_params(self, base: CheckParams) -> CheckParams:
        """The listener's check parameters with this server's overrides applied."""
        over = {k: v for k in SERVER_CHECK_KEYS if (v := getattr(self, k)) is not None}
        return replace(base, **over) if over else base


@dataclass(frozen=True, slots=True)
class Listen:
    """A HAProxy `listen` section: one frontend and its backend under one name."""

    name: str
    binds: tuple[Address, ...]
    servers: tuple[ServerConf, ...]
    mode: str = "http"
    balance: str = "roundrobin"
    retries: int = 3
    redispatch: bool = True
    forwardfor: bool = False
    maxconn: int | None = None
    critical: bool = False
    failback: bool = False
    allbackups: bool = False  # HAProxy `option allbackups`: spread over all backups, not the first
    log_format: str = "httplog"
    timeout: Timeouts = field(default_factory=Timeouts)
    health: Health | None = None  # None = no active checks (servers assumed up)
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class LogConf:
    target: str = "stdout"  # stdout | syslog:/dev/log | syslog:udp:HOST:PORT | file:/path | none
    level: str = "info"
    # syslog message format: rfc5424 | rfc3164; None = rfc3164 on a unix socket (what
    # journald and rsyslog's /dev/log parse), rfc5424 over UDP
    format: str | None = None

    @property
    def enabled(self) -> bool:
        return self.target != "none"


@dataclass(frozen=True, slots=True)
class StatsAuth:
    user: str
    password: str | None = None
    password_file: str | None = None


@dataclass(frozen=True, slots=True)
class StatsConf:
    bind: Address
    auth: StatsAuth | None = None


@dataclass(frozen=True, slots=True)
class PeersConf:
    """`global.peers`: the writer sync between pylb nodes (docs/galera.md, "One writer
    across proxy nodes"). `nodes` are the OTHER pylb nodes as (name, sync address)."""

    bind: Address
    node: str | None = None  # this node's name among its peers; None = the host name
    nodes: tuple[tuple[str, Address], ...] = ()
    key_file: str | None = None  # shared secret (HMAC-SHA256 key); required with nodes
    interval: float = 1.0  # every claim is re-announced this often (heals lost datagrams)


@dataclass(frozen=True, slots=True)
class GlobalConf:
    maxconn: int = 20000
    workers: int = 1
    admin_socket: str | None = None
    log: LogConf = field(default_factory=LogConf)
    stats: StatsConf | None = None
    hard_stop_after: float = 30.0  # bound on draining at stop/reload
    peers: PeersConf | None = None  # writer sync with other pylb nodes (writer-pin)
    # Where the writer state file lives (writers.json). None = the master's private run
    # directory: the writer survives reloads and worker restarts, not a restart of pylb.
    state_dir: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    global_: GlobalConf
    listens: tuple[Listen, ...]
    vrrp: dict | None = None  # validated by the VRRP subsystem (issue "VRRP"); raw mapping here
    source: str = "<memory>"

    def listen(self, name: str) -> Listen:
        for lst in self.listens:
            if lst.name == name:
                return lst
        raise KeyError(name)
