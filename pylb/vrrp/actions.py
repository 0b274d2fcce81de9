"""Execute a VRRP FSM's action list against the kernel, in the order given.

The FSM already orders a takeover as keepalived's `vrrp_state_become_master` does
(STYLE.md 5.6): advert first (the old master drops its VIPs before our GARPs), then the
VIPs (`vip.VipManager`, rtnetlink), then the GARP / NA burst (`garp.GarpPacer`, which
also owns the delayed repeat and the refresh), then notify (`notify.Notifier`, never
blocking). Leaving MASTER (`RemoveVips`) stops the pacer first, so no GARP claims an
address we no longer hold.

Timer actions (`SetTimer`, `CancelTimer`) are not executed here: the speaker re-reads
`fsm.next_deadline()` after every step and hands it to the scheduler.

A kernel error on one action is logged and counted and does not stop the others: a VIP
that cannot be added must not also cost the adverts that keep the peer informed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pylb.vrrp import packet
from pylb.vrrp.garp import GarpPacer
from pylb.vrrp.notify import Notifier
from pylb.vrrp.stats import DropStats
from pylb.vrrp.transport import VrrpSocket
from pylb.vrrp.types import (
    PRIO_STOP,
    Action,
    AddVips,
    InstanceConfig,
    Notify,
    RemoveVips,
    SendAdvert,
    SendGratuitous,
)
from pylb.vrrp.vip import VipManager

log = logging.getLogger("pylb.vrrp")


class ActionRunner:
    """The I/O of one instance: its socket, its VIPs, its GARP pacer, its notify scripts."""

    __slots__ = ("_adverts", "cfg", "errors", "notifier", "pacer", "sock", "stats", "vips")

    def __init__(
        self,
        cfg: InstanceConfig,
        sock: VrrpSocket,
        vips: VipManager,
        pacer: GarpPacer | None,
        notifier: Notifier,
        stats: DropStats,
    ) -> None:
        self.cfg = cfg
        self.sock = sock
        self.vips = vips
        self.pacer = pacer
        self.notifier = notifier
        self.stats = stats
        self.errors = 0
        self._adverts: dict[int, list[tuple[object, bytes]]] = {}

    def run(self, actions: Iterable[Action]) -> None:
        for act in actions:
            try:
                self._one(act)
            except OSError as e:
                self.errors += 1
                log.error("(%s) %s failed: %s", self.cfg.name, type(act).__name__, e)

    def _one(self, act: Action) -> None:
        if isinstance(act, SendAdvert):
            self.send_advert(act.priority)
        elif isinstance(act, AddVips):
            added = self.vips.add()
            if added:
                log.info("(%s) added %s", self.cfg.name, ", ".join(map(str, added)))
        elif isinstance(act, SendGratuitous):
            if self.pacer is not None:
                self.pacer.start()
        elif isinstance(act, RemoveVips):
            if self.pacer is not None:
                self.pacer.stop()
            removed = self.vips.remove()
            if removed:
                log.info("(%s) removed %s", self.cfg.name, ", ".join(map(str, removed)))
        elif isinstance(act, Notify):
            script = getattr(self.cfg.notify, act.state.name.lower())
            self.notifier.notify(script, self.cfg.name, act.state.value, act.priority)
        # SetTimer / CancelTimer: the speaker reschedules from fsm.next_deadline().

    def send_advert(self, priority: int) -> None:
        """One advert to the group or to every unicast peer.

        Encoded bytes are cached per priority (and destination): a master sends the same
        advert every interval, and scapy's build is the slow part of a send.
        """
        frames = self._adverts.get(priority)
        if frames is None:
            adv = packet.advert_for(self.cfg, priority)
            frames = [
                (dst, packet.encode(adv, src=self.sock.src, dst=dst))
                for dst in self.sock.destinations
            ]
            if len(self._adverts) > 8:
                self._adverts.clear()
            self._adverts[priority] = frames
        for dst, data in frames:
            self.sock.send(data, dst)  # type: ignore[arg-type]
        self.stats.count("adverts_sent")
        if priority == PRIO_STOP:
            self.stats.count("priority_zero_sent")
