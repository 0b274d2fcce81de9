"""VRRP vocabulary: states, events, actions and the per-instance configuration.

Kept apart from `fsm.py` so the I/O shell (speaker, netlink, GARP) can import the words
without the rules, and the rules live in one place (`fsm.TRANSITIONS`).

Units: every duration is float seconds, as in `pylb.config.model`. The wire units
(whole seconds in VRRPv2, centiseconds in VRRPv3) appear only in `packet.py`.
Addresses are `ipaddress` objects, so comparisons (the equal-priority tie-break) are
integer comparisons, never string ones.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# RFC 5798 §5.2.2 / §5.2.3 (RFC 3768 §5.2.2): the groups adverts are sent to.
MCAST_GROUP_V4 = ipaddress.IPv4Address("224.0.0.18")
MCAST_GROUP_V6 = ipaddress.IPv6Address("ff02::12")
IPPROTO_VRRP = 112
VRRP_TTL = 255  # RFC 5798 §5.1.1.3: sent with 255, anything else was routed: drop it
PRIO_OWNER = 255  # RFC 5798 §5.2.4: the router that owns the addresses
PRIO_STOP = 0  # RFC 5798 §5.2.4: "the current Master has stopped participating"
PASS_MAX = 8  # keepalived's PASS auth data is 8 bytes (RFC 3768 §5.3.10 field size)
MAX_ADVER_INT_V3_CS = 4095  # 12-bit field, centiseconds (RFC 5798 §5.2.7)
MAX_ADVER_INT_V2_S = 255  # 8-bit field, seconds (RFC 3768 §5.3.7)


class Family(enum.IntEnum):
    V4 = 4
    V6 = 6


class State(enum.Enum):
    """RFC 5798 §6.4 states, plus keepalived's FAULT and pylb's STOPPING.

    STOPPING is a Master that has sent priority 0 and still holds the VIPs until the
    peer's advert as master is seen (ARCHITECTURE.md "Stopping a node"), so no request
    is refused while this node is still the one clients reach.
    """

    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"
    STOPPING = "STOPPING"


class TimerKind(enum.Enum):
    MASTER_DOWN = "master_down"  # Backup: the master is presumed dead when it fires
    ADVER = "adver"  # Master (and STOPPING): time to send the next advert
    STOP = "stop"  # STOPPING: upper bound on holding the VIPs after priority 0


class NotifyKind(enum.Enum):
    """keepalived's notify script states (`INSTANCE name STATE priority`)."""

    MASTER = "MASTER"
    BACKUP = "BACKUP"
    FAULT = "FAULT"
    STOP = "STOP"


# ---------------------------------------------------------------------------- events
# Frozen and slotted (STYLE.md 1.6): an event is a fact that happened, the FSM reads it.


@dataclass(frozen=True, slots=True)
class Startup:
    """The instance is configured and its interface is usable (RFC 5798 §6.4.1).

    `resume`: the speaker replaces one that was MASTER a moment ago and handed its VIPs
    over without a priority-0 advert (`pylb run` reload, docs/vrrp.md "Reload"): start
    as MASTER at once instead of leaving the VIP to the peer and preempting it back."""

    resume: bool = False


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Clean stop requested (SIGTERM, reload removing the instance)."""


@dataclass(frozen=True, slots=True)
class AdvertReceived:
    """A *validated* advert for this VRID (see `packet.validate`).

    `max_adver_int` is the advert's interval in seconds (VRRPv3 learns it; VRRPv2 only
    accepts adverts whose interval equals ours, so it is ours).
    """

    priority: int
    src_ip: IPAddress
    max_adver_int: float


@dataclass(frozen=True, slots=True)
class MasterDownTimerFired:
    """RFC 5798 §6.4.2: no advert from a master for Master_Down_Interval."""


@dataclass(frozen=True, slots=True)
class AdverTimerFired:
    """RFC 5798 §6.4.3: time for the Master's next advert."""


@dataclass(frozen=True, slots=True)
class StopTimerFired:
    """STOPPING: no peer took over within the bound; release the VIPs anyway."""


@dataclass(frozen=True, slots=True)
class FaultOn:
    """A tracked interface went down (keepalived's FAULT state)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class FaultOff:
    """Every tracked interface is up again."""


@dataclass(frozen=True, slots=True)
class PriorityChanged:
    """New effective priority (track weights applied; see `effective_priority`)."""

    priority: int

    def __post_init__(self) -> None:
        # 0 means "master stopping" on the wire: never a priority to run with.
        if not 1 <= self.priority <= 255:
            raise ValueError(f"priority {self.priority} out of 1..255")


@dataclass(frozen=True, slots=True)
class StepDown:
    """Leave MASTER without a better advert: our own process ran too late to trust that
    no backup took over (scheduler lag, STYLE.md 5.7), or a sync group member left
    MASTER. The VIPs go; the instance listens as BACKUP."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class SyncMaster:
    """A sync group member became MASTER: a BACKUP member follows at once."""


Event = (
    Startup
    | Shutdown
    | AdvertReceived
    | MasterDownTimerFired
    | AdverTimerFired
    | StopTimerFired
    | FaultOn
    | FaultOff
    | PriorityChanged
    | StepDown
    | SyncMaster
)
EVENT_TYPES: tuple[type, ...] = (
    Startup,
    Shutdown,
    AdvertReceived,
    MasterDownTimerFired,
    AdverTimerFired,
    StopTimerFired,
    FaultOn,
    FaultOff,
    PriorityChanged,
    StepDown,
    SyncMaster,
)
TIMER_EVENTS: dict[TimerKind, type] = {
    TimerKind.MASTER_DOWN: MasterDownTimerFired,
    TimerKind.ADVER: AdverTimerFired,
    TimerKind.STOP: StopTimerFired,
}

# --------------------------------------------------------------------------- actions
# What the shell must do, in list order (keepalived's become-master recipe: advert first
# so the old master drops its VIPs before our GARPs, then addresses, GARP, notify).


@dataclass(frozen=True, slots=True)
class SendAdvert:
    priority: int


@dataclass(frozen=True, slots=True)
class AddVips:
    pass


@dataclass(frozen=True, slots=True)
class RemoveVips:
    pass


@dataclass(frozen=True, slots=True)
class SendGratuitous:
    """Gratuitous ARP / unsolicited NA burst; the shell paces and repeats it."""


@dataclass(frozen=True, slots=True)
class SetTimer:
    kind: TimerKind
    deadline: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    kind: TimerKind


@dataclass(frozen=True, slots=True)
class Notify:
    state: NotifyKind
    priority: int


Action = SendAdvert | AddVips | RemoveVips | SendGratuitous | SetTimer | CancelTimer | Notify

# ---------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class AuthConf:
    """VRRPv2 simple password (RFC 2338 type 1), as keepalived's `auth_type PASS`."""

    password: str
    type: str = "pass"

    def __post_init__(self) -> None:
        if self.type != "pass":
            raise ValueError(f"auth type {self.type!r}: only 'pass' is supported")
        raw = self.password.encode()
        if not raw:
            raise ValueError("auth password is empty")
        if len(raw) > PASS_MAX:
            # keepalived silently uses the first 8 bytes; say it instead of guessing.
            raise ValueError(
                f"auth password is {len(raw)} bytes; VRRPv2 PASS carries at most {PASS_MAX}"
                " (keepalived uses only the first 8: write those)"
            )

    @property
    def wire(self) -> bytes:
        """The 8 auth-data bytes on the wire: the password, NUL padded (keepalived)."""
        return self.password.encode().ljust(PASS_MAX, b"\0")


@dataclass(frozen=True, slots=True)
class UnicastConf:
    src: IPAddress
    peers: tuple[IPAddress, ...]

    def __post_init__(self) -> None:
        if not self.peers:
            raise ValueError("unicast: at least one peer")
        if any(p.version != self.src.version for p in self.peers):
            raise ValueError("unicast: src and peers must be one address family")


@dataclass(frozen=True, slots=True)
class TrackInterface:
    """keepalived `track_interface`: weight 0 = FAULT when down, else lower priority."""

    name: str
    weight: int = 0


@dataclass(frozen=True, slots=True)
class TrackScript:
    """keepalived `vrrp_script`: run `path` every `interval`; `weight` when failing."""

    name: str
    path: str
    interval: float = 1.0
    weight: int = 0
    rise: int = 1
    fall: int = 1
    timeout: float = 0.0  # a run taking longer is killed and fails; 0 = `interval`


@dataclass(frozen=True, slots=True)
class TrackConf:
    proxy_weight: int = 0  # subtracted while the data plane reports itself unhealthy
    interfaces: tuple[TrackInterface, ...] = ()
    scripts: tuple[TrackScript, ...] = ()


@dataclass(frozen=True, slots=True)
class NotifyConf:
    master: str | None = None
    backup: str | None = None
    fault: str | None = None
    stop: str | None = None


def _check_range(what: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer {lo}..{hi}, got {value!r}")


@dataclass(frozen=True, slots=True)
class InstanceConfig:
    """One `vrrp_instance`. Validated once here; the YAML loader adds positions.

    `version` defaults to 2 because that is keepalived's default, and a pylb node is
    meant to sit next to an unmodified keepalived.
    """

    name: str
    interface: str
    vrid: int
    virtual_ipaddresses: tuple[IPInterface, ...]
    priority: int = 100  # RFC 5798 §6.1 default
    version: int = 2
    advert_interval: float = 1.0  # RFC 5798 §6.1 default: 100 centiseconds
    preempt: bool = True
    preempt_delay: float = 0.0
    auth: AuthConf | None = None
    unicast: UnicastConf | None = None
    track: TrackConf = field(default_factory=TrackConf)
    notify: NotifyConf = field(default_factory=NotifyConf)
    # keepalived default false: a Master answers a lower-priority advert at once, so a
    # peer that wrongly thinks it is master hears about the better one without waiting.
    lower_prio_no_advert: bool = False
    garp_master_repeat: int = 5  # keepalived defaults
    garp_master_delay: float = 5.0
    garp_master_refresh: float = 0.0  # 0 = no periodic refresh

    def __post_init__(self) -> None:
        _check_range("vrid", self.vrid, 1, 255)
        _check_range("priority", self.priority, 1, 255)
        if self.version not in (2, 3):
            raise ValueError(f"version must be 2 or 3, got {self.version!r}")
        if not self.virtual_ipaddresses:
            raise ValueError("virtual_ipaddresses: at least one address")
        if len(self.virtual_ipaddresses) > 255:
            raise ValueError("virtual_ipaddresses: at most 255 (one-byte count on the wire)")
        fams = {a.version for a in self.virtual_ipaddresses}
        if len(fams) != 1:
            raise ValueError("virtual_ipaddresses: one address family per instance")
        if self.version == 2 and self.family is Family.V6:
            raise ValueError("IPv6 needs VRRP version 3 (RFC 3768 is IPv4 only)")
        if self.auth is not None and self.version != 2:
            raise ValueError("auth exists only in VRRPv2 (RFC 5798 removed it)")
        if self.unicast is not None and self.unicast.src.version != self.family:
            raise ValueError("unicast addresses must be the VIPs' address family")
        iv = self.advert_interval
        if not isinstance(iv, int | float) or not math.isfinite(iv):
            raise ValueError(f"advert_interval must be a number of seconds, got {iv!r}")
        if self.version == 2:
            if iv != int(iv) or not 1 <= iv <= MAX_ADVER_INT_V2_S:
                raise ValueError(
                    f"advert_interval {iv}s: VRRPv2 needs whole seconds 1..{MAX_ADVER_INT_V2_S}"
                )
        else:
            cs = round(iv * 100)
            if abs(cs - iv * 100) > 1e-6 or not 1 <= cs <= MAX_ADVER_INT_V3_CS:
                raise ValueError(f"advert_interval {iv}s: VRRPv3 needs centiseconds 0.01..40.95s")
        if not 0 <= self.preempt_delay <= 1000:
            raise ValueError("preempt_delay must be 0..1000 s (keepalived's bound)")

    @property
    def family(self) -> Family:
        return Family(self.virtual_ipaddresses[0].version)

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """The VIPs without prefix, in configured order: what an advert carries."""
        return tuple(a.ip for a in self.virtual_ipaddresses)

    @property
    def adver_int_wire(self) -> int:
        """Advertisement interval in wire units: seconds (v2) or centiseconds (v3)."""
        if self.version == 2:
            return int(self.advert_interval)
        return round(self.advert_interval * 100)


def effective_priority(base: int, delta: int) -> int:
    """Priority after track weights (keepalived's `effective_priority`).

    An adjusted priority is clamped to 1..254: 0 would mean "stopping" on the wire and
    255 would claim address ownership, and neither is what a weight means.
    """
    if delta == 0:
        return base
    return max(1, min(254, base + delta))
