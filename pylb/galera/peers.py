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
    (unique among peers). `peers`: the other nodes' sync addresses. Loop thread only.
    """

    def __init__(
        self,
        controllers: Mapping[str, WriterController],
        *,
        node: str,
        bind: Address,
        peers: Sequence[Address],
        key: bytes,
        interval: float = 1.0,
    ) -> None:
        if not key:
            raise ValueError("peers need a shared key")
        self.controllers = dict(controllers)
        self.node = node
        self.bind = bind
        self.peers = list(peers)
        self.key = key
        self.interval = interval
        self.claims: dict[str, Claim] = {}
        self.seen_epoch: dict[str, int] = {}
        self.address = bind
        self.dropped = 0  # datagrams refused (MAC, format)
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heard = asyncio.Event()  # an authentic datagram from a peer arrived
        now = time.time()
        for name, ctl in self.controllers.items():
            w = ctl.writer
            # Provisional (epoch 0): a fresh node's choice by order loses to any peer's.
            self.claims[name] = Claim(name, w.name if w else None, 0, now, node)
            self.seen_epoch[name] = 0
            ctl.hooks.append(self._local_change)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self), local_addr=(self.bind.host, self.bind.port)
        )
        self._transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = Address(host, port)
        self._tick()

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until a peer has been heard from (its claim merged), at most `timeout`.
        A fresh node calls it before serving, so its first sessions already go to the
        writer in use rather than to its provisional choice. False: no peer answered
        (alone, or peers down): the choice by order stands."""
        if not self.peers:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._heard.wait()
        except TimeoutError:
            return False
        return True

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

    def add_peer(self, address: Address) -> None:
        if address not in self.peers:
            self.peers.append(address)
            self._send(address)

    # -- events ---------------------------------------------------------------------------

    def _tick(self) -> None:
        for p in self.peers:
            self._send(p)
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _send(self, addr: Address | tuple[Any, ...]) -> None:
        if self._transport is None:
            return
        target = (addr.host, addr.port) if isinstance(addr, Address) else addr
        data = encode(self.key, self.node, list(self.claims.values()))
        # A peer that cannot be reached now: the next tick tries again.
        with contextlib.suppress(OSError):
            self._transport.sendto(data, target)

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
        answer = False
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
