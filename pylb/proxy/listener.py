"""Listening sockets, bound by the master before it forks the workers.

Why the master binds: the sockets then outlive any worker. A worker that crashes is
replaced by one that inherits the very same sockets, so connections that arrive meanwhile
wait in the kernel's accept queue instead of being refused; a reload (issue 6) forks the new
generation onto the same sockets while the old one drains (HAProxy's master-worker model).

Socket options, and why:

- SO_REUSEADDR: rebinding right after a restart must not fail on TIME_WAIT sockets.
- SO_REUSEPORT, always: with `workers: N` each worker slot gets its *own* socket on the
  same address, so the kernel spreads new connections evenly over the workers (one shared
  socket would wake every worker for each connection and favour the busiest). Set also
  with one worker, so a reload that raises `workers` can bind the new slots' sockets next
  to the running one. As with HAProxy (which sets it by default), another process of the
  same user can join the group; `pylb demo` binds without it to see a busy port as busy.
- IP_FREEBIND (15 on Linux; not always exported by Python's `socket`): binding to a VIP
  this node does not hold yet (the VRRP backup) succeeds without
  `net.ipv4.ip_nonlocal_bind`; traffic arrives as soon as VRRP adds the address.
- IPV6_V6ONLY on IPv6 sockets, so `::` and `0.0.0.0` on the same port can both be bound.
- backlog = min(net.core.somaxconn, maxconn): the kernel caps it anyway, and queueing more
  connections than the listener would ever serve only delays the client's error.

`*` and the empty host mean every IPv4 address (`0.0.0.0`), as in HAProxy.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable

from pylb.config.model import Address, Config

log = logging.getLogger("pylb.listener")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # linux/in.h
SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def somaxconn() -> int:
    try:
        with open(SOMAXCONN_PATH) as f:
            text = f.read().strip()
    except OSError:
        return socket.SOMAXCONN
    return int(text) if text.isdigit() and len(text) < 10 else socket.SOMAXCONN


def backlog_for(maxconn: int | None) -> int:
    cap = somaxconn()
    return max(1, min(cap, maxconn)) if maxconn else cap


def bind_host(host: str) -> str:
    return "0.0.0.0" if host in ("", "*") else host


def bind_socket(addr: Address, *, backlog: int, reuseport: bool = True) -> socket.socket:
    """A non-blocking listening TCP socket on `addr`; OSError (with the address) on failure."""
    host = bind_host(addr.host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Also honoured on AF_INET6 sockets. Not Linux: binding a VIP we do not hold
        # fails loudly below instead.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, addr.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot bind {addr}: {e.strerror}") from e
    return sock


def sock_address(sock: socket.socket) -> Address:
    """The address a socket is bound to (the real port after binding port 0)."""
    host, port = sock.getsockname()[:2]
    return Address(host, port)


class ListenerSet:
    """The master's listening sockets: one per (bind address, worker slot).

    `sync(config)` binds what a config needs, keeps the sockets of addresses that did not
    change (so a reload never closes a listener that stays) and closes the others.
    `for_slot(i)` is what worker slot `i` serves: listen name -> its sockets.
    """

    def __init__(self) -> None:
        self._socks: dict[tuple[Address, int], socket.socket] = {}
        self._names: dict[str, list[Address]] = {}
        self.slots = 0

    def sync(self, config: Config) -> None:
        """Bind every bind address of `config` for `config.global_.workers` slots. On error
        the sockets bound by this call are closed again and the previous set is untouched."""
        slots = max(1, config.global_.workers)
        wanted: dict[tuple[Address, int], int] = {}  # key -> backlog
        names: dict[str, list[Address]] = {}
        for lst in config.listens:
            backlog = backlog_for(lst.maxconn or config.global_.maxconn)
            names[lst.name] = list(lst.binds)
            for addr in lst.binds:
                for slot in range(slots):
                    wanted[(addr, slot)] = backlog
        fresh: dict[tuple[Address, int], socket.socket] = {}
        try:
            for key, backlog in wanted.items():  # slot 0 of an address comes first
                if key not in self._socks:
                    addr, slot = key
                    if addr.port == 0 and slot > 0:  # the other slots join slot 0's port
                        first = fresh.get((addr, 0)) or self._socks[(addr, 0)]
                        addr = Address(addr.host, first.getsockname()[1])
                    fresh[key] = bind_socket(addr, backlog=backlog)
        except OSError:
            for s in fresh.values():
                s.close()
            raise
        for key in list(self._socks):
            if key not in wanted:
                self._socks.pop(key).close()
        self._socks.update(fresh)
        self._names = names
        self.slots = slots

    def for_slot(self, slot: int) -> dict[str, list[socket.socket]]:
        return {
            name: [self._socks[(addr, slot)] for addr in addrs]
            for name, addrs in self._names.items()
        }

    def all_sockets(self) -> Iterable[socket.socket]:
        return list(self._socks.values())

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
        self._names.clear()


def bind_config(config: Config) -> dict[str, list[socket.socket]]:
    """One socket per bind of every listen (a single, in-process worker: `pylb demo`)."""
    out: dict[str, list[socket.socket]] = {}
    try:
        for lst in config.listens:
            backlog = backlog_for(lst.maxconn or config.global_.maxconn)
            out[lst.name] = socks = []
            for a in lst.binds:
                socks.append(bind_socket(a, backlog=backlog))
    except OSError:
        for socks in out.values():
            for s in socks:
                s.close()
        raise
    return out
