"""The RFC's timer formulas, named as the RFCs name them (float seconds in and out).

RFC 3768 §6.1 (VRRPv2):
    Skew_Time            = (256 - Priority) / 256                      seconds
    Master_Down_Interval = 3 * Advertisement_Interval + Skew_Time

RFC 5798 §6.1 (VRRPv3):
    Skew_Time            = ((256 - Priority) * Master_Adver_Interval) / 256   centiseconds
    Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time

The v3 skew scales with the interval the master advertises, so a 100 ms advert gives a
backup a sub-second takeover; the v2 skew is always under one second. Because the skew
shrinks as priority grows, the best backup's timer fires first and its advert resets the
others' timers: that, not any election message, is how VRRP picks one new master.

We do not truncate to whole centiseconds: keepalived 2.2.7 computes the v3 skew in
microseconds (`VRRP_TIMER_SKEW`: ((256-prio) * cs * 625) / 16 µs), which equals this
formula to the microsecond.
"""

from __future__ import annotations

V2 = 2
V3 = 3


def skew_time(priority: int, master_adver_int: float, version: int) -> float:
    """Skew_Time in seconds for a router of `priority` (RFC 3768 / RFC 5798 §6.1).

    `master_adver_int` (seconds) is used by VRRPv3 only; VRRPv2's skew ignores it.
    """
    if not 0 <= priority <= 255:
        raise ValueError(f"priority {priority} out of 0..255")
    if version == V2:
        return (256 - priority) / 256
    if version == V3:
        return ((256 - priority) * master_adver_int) / 256
    raise ValueError(f"VRRP version {version} unknown")


def master_down_interval(priority: int, master_adver_int: float, version: int) -> float:
    """Master_Down_Interval in seconds (RFC 3768 / RFC 5798 §6.1).

    For VRRPv2 `master_adver_int` is the (common, configured) Advertisement_Interval.
    """
    return 3 * master_adver_int + skew_time(priority, master_adver_int, version)
