"""One writer across pylb nodes: a small authenticated writer sync between peers (the
idea of HAProxy's `peers` + `stick on dst`, which Galera setups behind HAProxy use for the
same purpose). Decision and its failure cases: docs/galera.md, "One writer across proxy
nodes".

Every writer-pin listener has a *claim*: (writer, epoch, since, origin). Its order
(`Claim.key`) is: higher epoch first; on equal epochs the choice made earlier (`since`,
wall clock) wins — the writer the cluster has been using longest — then the origin name.
Rules (`merge`, pure):

- a local change (health, manual, failback) makes a new claim above everything seen
  (epoch = max seen + 1) and is announced to every peer;
- a received claim that beats ours is adopted when its writer is eligible here (the
  writer moves, old sessions closed as for any change); when it is not (our health view
  differs), we keep our writer and do not answer, so differing views never ping-pong;
- a received claim that loses to ours is answered with ours, to the sender only (one
  answer per message: no amplification);
- a fresh node starts with epoch 0 (its choice by order is provisional) and announces it
  at once: any peer that has been running answers with a claim that beats it.

Datagrams: HMAC-SHA256 (32 bytes, shared key) followed by a JSON body. Forged or
corrupted datagrams are dropped before parsing. A replayed datagram can only repeat a
claim, which either loses to a newer one or is already ours: no replay window is needed.
Every claim is also re-announced every `interval`, which heals lost datagrams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pylb.balance.writerpin import PEER
from pylb.config.model import Address
from pylb.galera.writer import WriterController

log = logging.getLogger("pylb.galera")

MAC_LEN = 32
MAX_DATAGRAM = 8192  # a few listeners' claims; larger is not ours
VERSION = 1


@dataclass(frozen=True, slots=True)
class Claim:
    """A node's statement "the writer of `listen` is `writer`"."""

    listen: str
    writer: str | None
    epoch: int
    since: float  # wall clock (s) when the choice was made
    origin: str  # pylb node that made it

    @property
    def key(self) -> tuple[int, float, str]:
        return (self.epoch, -self.since, self.origin)

    def beats(self, other: Claim) -> bool:
        return self.key > other.key


@dataclass(frozen=True, slots=True)
class Merge:
    """What to do with a received claim: the claim to hold now, the writer to switch to
    (None: keep ours), whether to answer the sender with our claim."""

    claim: Claim
    switch_to: str | None
    answer: bool


def merge(local: Claim, remote: Claim, eligible: Callable[[str], bool]) -> Merge:
    """The peers rule for one received claim (pure)."""
    if remote == local:
        return Merge(local, None, False)
    if not remote.beats(local):
        return Merge(local, None, True)
    if remote.writer is None or not eligible(remote.writer):
        return Merge(local, None, False)
    switch = remote.writer if remote.writer != local.writer else None
    return Merge(remote, switch, False)


def local_claim(listen: str, writer: str | None, seen_epoch: int, node: str, now: float) -> Claim:
    """The claim for a change decided here: above every epoch seen."""
    return Claim(listen, writer, seen_epoch + 1, now, node)


# -- wire format ------------------------------------------------------------------------


def encode(key: bytes, node: str, claims: Sequence[Claim]) -> bytes:
    body = json.dumps(
        {
            "v": VERSION,
            "node": node,
            "claims": [[c.listen, c.writer, c.epoch, c.since, c.origin] for c in claims],
        },
        separators=(",", ":"),
    ).encode()
    return hmac.new(key, body, hashlib.sha256).digest() + body


class DecodeError(ValueError):
    pass


def decode(key: bytes, data: bytes) -> tuple[str, list[Claim]]:
    """(sender node, claims) of an authentic datagram; DecodeError otherwise."""
    if len(data) <= MAC_LEN or len(data) > MAX_DATAGRAM:
        raise DecodeError("bad size")
    mac, body = data[:MAC_LEN], data[MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise DecodeError("bad MAC")
    try:
        msg = json.loads(body)
    except ValueError:
        raise DecodeError("bad JSON") from None
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        raise DecodeError("bad version")
    node, raw = msg.get("node"), msg.get("claims")
    if not isinstance(node, str) or not isinstance(raw, list):
        raise DecodeError("bad message")
    claims = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 5):
            raise DecodeError("bad claim")
        listen, writer, epoch, since, origin = item
        if not (
            isinstance(listen, str)
            and (writer is None or isinstance(writer, str))
            and type(epoch) is int
            and epoch >= 0
            and isinstance(since, float | int)
            and not isinstance(since, bool)
            and math.isfinite(since)
            and isinstance(origin, str)
        ):
            raise DecodeError("bad claim field")
        claims.append(Claim(listen, writer, epoch, float(since), origin))
    return node, claims


# -- the shell: one UDP socket per pylb node ----------------------------------------------


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, sync: PeerSync) -> None:
        self.sync = sync

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sync._received(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable from a down peer
        pass


class PeerSync:
    """Keeps the writer of each writer-pin listener the same on every pylb node.

    `controllers`: listen name -> WriterController of this node. `node`: this node's name
    (unique among peers). `bind`: this node's UDP sync address (None: no UDP socket).
    `peers`: where the other members are: an `Address` (UDP, another pylb node) or a
    `str` (a unix datagram socket path: a sibling worker of this node, `local`).
    `local`: the unix datagram socket path this member binds for its sibling workers
    (docs/galera.md, "Workers"). `reuse_port`: SO_REUSEPORT on the UDP socket, so the
    next generation's worker can bind it while a reloaded one still drains. Loop thread
    only.
    """

    def __init__(
        self,
        controllers: Mapping[str, WriterController],
        *,
        node: str,
        bind: Address | None,
        peers: Sequence[Address | str],
        key: bytes,
        interval: float = 1.0,
        local: str | None = None,
        reuse_port: bool = False,
    ) -> None:
        if not key:
            raise ValueError("peers need a shared key")
        self.controllers = dict(controllers)
        self.node = node
        self.bind = bind
        self.peers: list[Address | str] = list(peers)
        self.key = key
        self.interval = interval
        self.local = local
        self.reuse_port = reuse_port
        self.claims: dict[str, Claim] = {}
        self.seen_epoch: dict[str, int] = {}
        self.address = bind
        self.dropped = 0  # datagrams refused (MAC, format)
        self._transport: asyncio.DatagramTransport | None = None  # UDP, other pylb nodes
        self._unix: asyncio.DatagramTransport | None = None  # sibling workers
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heard = asyncio.Event()  # an authentic datagram from a peer arrived
        self._heard_node = asyncio.Event()  # ... from another pylb node (UDP)
        now = time.time()
        for name, ctl in self.controllers.items():
            w = ctl.writer
            # Provisional (epoch 0): a fresh node's choice by order loses to any peer's.
            self.claims[name] = Claim(name, w.name if w else None, 0, now, node)
            self.seen_epoch[name] = 0
            ctl.hooks.append(self._local_change)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        try:
            if self.bind is not None:
                sock = _udp_socket(self.bind, reuse_port=self.reuse_port)
                transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self), sock=sock)
                self._transport = transport  # type: ignore[assignment]
                host, port = transport.get_extra_info("sockname")[:2]
                self.address = Address(host, port)
            if self.local is not None:
                usock = _unix_socket(self.local)
                utransport, _ = await loop.create_datagram_endpoint(
                    lambda: _Proto(self), sock=usock
                )
                self._unix = utransport  # type: ignore[assignment]
        except BaseException:
            self.stop()
            raise
        self._tick()

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until a peer has been heard from (its claim merged), at most `timeout`.
        A fresh node calls it before serving, so its first sessions already go to the
        writer in use rather than to its provisional choice. False: no peer answered
        (alone, or peers down): the choice by order stands. With other pylb nodes among
        the peers, a sibling worker's claim does not count: they may all be fresh."""
        if not self.peers:
            return False
        nodes = any(not isinstance(p, str) for p in self.peers)
        event = self._heard_node if nodes else self._heard
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def close_external(self) -> None:
        """Stop talking to other pylb nodes (UDP) but keep following the sibling workers:
        a draining worker's successor owns the node's place among its peers."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.peers = [p for p in self.peers if isinstance(p, str)]

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ctl in self.controllers.values():
            if self._local_change in ctl.hooks:
                ctl.hooks.remove(self._local_change)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._unix is not None:
            self._unix.close()
            self._unix = None
            if self.local is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.local)

    def add_peer(self, address: Address | str) -> None:
        if address not in self.peers:
            self.peers.append(address)
            self._send(address)

    # -- events ---------------------------------------------------------------------------

    def _tick(self) -> None:
        for p in self.peers:
            self._send(p)
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _send(self, addr: Address | str | tuple[Any, ...]) -> None:
        transport = self._unix if isinstance(addr, str) else self._transport
        if transport is None or not addr:
            return
        target = (addr.host, addr.port) if isinstance(addr, Address) else addr
        data = encode(self.key, self.node, list(self.claims.values()))
        # A peer that cannot be reached now (down, not started yet): the next tick tries
        # again. asyncio reports sendto errors to error_received (ignored) or raises.
        with contextlib.suppress(OSError):
            transport.sendto(data, target)

    def _local_change(self, ctl: WriterController, old: Any, new: Any, reason: str) -> None:
        if reason == PEER:
            return  # adopting a peer's claim is not a new claim
        name = ctl.backend.name
        epoch = max(self.seen_epoch[name], self.claims[name].epoch)
        self.claims[name] = local_claim(
            name, new.name if new else None, epoch, self.node, time.time()
        )
        self.seen_epoch[name] = epoch + 1
        for p in self.peers:
            self._send(p)

    def _received(self, data: bytes, addr: Any) -> None:
        try:
            sender, claims = decode(self.key, data)
        except DecodeError as e:
            self.dropped += 1
            log.debug("peers: datagram from %s dropped: %s", addr, e)
            return
        if sender == self.node:
            return
        self._heard.set()
        if not isinstance(addr, str):
            self._heard_node.set()
        answer = adopted = False
        for remote in claims:
            ctl = self.controllers.get(remote.listen)
            if ctl is None:
                continue
            name = remote.listen
            self.seen_epoch[name] = max(self.seen_epoch[name], remote.epoch)
            backend = ctl.backend

            def eligible(server: str, backend: Any = backend, ctl: WriterController = ctl) -> bool:
                try:
                    return ctl.balancer.can_write(backend.server(server))
                except KeyError:
                    return False

            m = merge(self.claims[name], remote, eligible)
            adopted = adopted or m.claim is not self.claims[name]
            self.claims[name] = m.claim
            answer = answer or m.answer
            if m.switch_to is not None:
                if log.isEnabledFor(logging.INFO):
                    log.info(
                        "peers: %s adopts writer %s from %s (epoch %d)",
                        name,
                        m.switch_to,
                        remote.origin,
                        remote.epoch,
                    )
                ctl.set_writer(m.switch_to, PEER)
        if answer:
            self._send(addr)
        if adopted:
            # Pass an adopted claim on at once (not only at the next tick): a worker that
            # learns a peer node's writer tells its sibling workers now. Members that
            # already hold it do not answer, so this cannot loop.
            sender_addr = _peer_key(addr)
            for p in self.peers:
                if _peer_key(p) != sender_addr:
                    self._send(p)


def _peer_key(addr: Any) -> Any:
    """Comparable form of a peer address: Address, (host, port[, ...]) or a path."""
    if isinstance(addr, Address):
        return (addr.host, addr.port)
    if isinstance(addr, tuple):
        return tuple(addr[:2])
    return addr


def _udp_socket(bind: Address, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if bind.family_is_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind.host, bind.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_socket(path: str) -> socket.socket:
    """A unix datagram socket at `path` (a stale file from a crashed worker is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
