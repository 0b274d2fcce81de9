"""Builders shared by the admin tests: Listen configs, Backends and a snapshot provider
over them (the same objects a worker holds; no mocks)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pylb.admin.stats import Snapshot
from pylb.config.model import Address, Health, Listen, ServerConf
from pylb.proxy.backend import Backend
from pylb.proxy.state import ListenContext


def listen(
    name: str = "api",
    servers: Sequence[ServerConf] | None = None,
    **kw: Any,
) -> Listen:
    if servers is None:
        servers = (
            ServerConf("s1", Address("127.0.0.1", 9001)),
            ServerConf("s2", Address("127.0.0.1", 9002), weight=2),
            ServerConf("s3", Address("127.0.0.1", 9003), backup=True),
        )
    return Listen(name=name, binds=(Address("127.0.0.1", 0),), servers=tuple(servers), **kw)


def backends(*listens: Listen) -> list[Backend]:
    return [Backend(lst) for lst in (listens or (listen(),))]


class CheckStateStub:
    """The attributes of pylb.health.state.CheckState the stats read (rise/fall counter)."""

    def __init__(self, rise: int = 2, fall: int = 3, health: int | None = None) -> None:
        self.rise = rise
        self.fall = fall
        self.health = rise + fall - 1 if health is None else health
        self.failed_checks = 0
        self.down_transitions = 0


class CheckHandleStub:
    """What `Server.check` holds while a health check runs (a ServerCheck)."""

    def __init__(self, state: CheckStateStub | None = None, running: bool = False) -> None:
        self.state = state or CheckStateStub()
        self.running = running

    def observe(self, obs: Any, info: str = "") -> None:
        pass


class Provider:
    """A StatsProvider over fixed backends; `calls` counts snapshots and `on_snapshot`
    runs before each (tests change state at a chosen request)."""

    def __init__(
        self,
        bes: Sequence[Backend],
        contexts: Mapping[str, ListenContext] | None = None,
        *,
        writer: Mapping[str, Mapping[str, Any]] | None = None,
        vrrp: Sequence[Mapping[str, Any]] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.backends = list(bes)
        self.contexts = dict(contexts or {})
        self.writer = writer
        self.vrrp = vrrp
        self.info = dict(info or {"pid": 4242, "uptime": 7, "maxconn": 100, "curr_conns": 0})
        self.calls = 0
        self.on_snapshot: Callable[[int], None] | None = None

    def snapshot(self) -> Snapshot:
        self.calls += 1
        if self.on_snapshot is not None:
            self.on_snapshot(self.calls)
        return Snapshot(
            backends=self.backends,
            contexts=self.contexts,
            info=self.info,
            writer=self.writer,
            vrrp=self.vrrp,
        )


def health(**kw: Any) -> Health:
    return Health(type="tcp", **kw)
