"""The VRRP speaker as a process: pylb nodes and a real keepalived in network namespaces.

Every pylb node is ``python -m pylb.vrrp.speaker -c CONF`` run inside its namespace
(tests/system/conftest_vrrp.py); state is read where a peer would see it (is the VIP on
the interface?) and, for counters, over the speaker's control socket (`show vrrp json`).
Takeover times are measured from the moment the old master is dead (SIGKILL returned)
or signalled (SIGTERM sent) to the moment the VIP is on the new master's interface,
and printed (``-s``); the bounds asserted are the protocol's (Master_Down_Interval or
Skew_Time) plus 0.4 s, the issue's figures.

Intervals: 1 s where the issue's numbers are stated for it (two-node failover, SIGTERM,
jitter), VRRPv3 100-500 ms elsewhere to keep the module short.

Root only; documentation addresses only; every namespace and process is removed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pylb.vrrp import packet
from pylb.vrrp.control import query, show_vrrp_text
from pylb.vrrp.timers import master_down_interval, skew_time
from pylb.vrrp.track import encode_heartbeat
from pylb.vrrp.transport import VrrpSocket
from pylb.vrrp.types import AuthConf, InstanceConfig
from tests.system import conftest_vrrp as _cv
from tests.system import keepalived as _keepalived
from tests.system import netns as _netns
from tests.system.conftest_vrrp import SpeakerProc, instance
from tests.system.keepalived import Keepalived
from tests.system.netns import Lab, has_address, inside, ip, ns_pids, set_link, wait_until

lab = _netns.lab
lab3 = _netns.lab3
keepalived = _keepalived.keepalived
speakers = _cv.speakers

# Linux <asm-generic/socket.h> (also the SCM_ type); the socket module does not export it.
SO_TIMESTAMPNS = 35

pytestmark = [pytest.mark.root, pytest.mark.slow]

VIP = "192.0.2.100/24"
VIP_IP = "192.0.2.100"
MARGIN = 0.4  # the allowance over the protocol's takeover time


def report(msg: str) -> None:
    print(f"\n[vrrp-speaker] {msg}", file=sys.stderr)


def wait_holder(sp: SpeakerProc | Keepalived, t0: float, timeout: float) -> float:
    """Seconds from `t0` until `sp` holds its VIPs (fails after `timeout`)."""
    holds = sp.holds if isinstance(sp, SpeakerProc) else sp.holds_vips
    wait_until(holds, timeout, f"{sp.node.ns} to hold the VIP", step=0.005)
    return time.monotonic() - t0


def holders(nodes: list, vip: str = VIP_IP) -> list[int]:
    return [n.index for n in nodes if has_address(n.ns, vip, n.ifname)]


def mdi(prio: int, adv: float, version: int = 3) -> float:
    return master_down_interval(prio, adv, version)


# ------------------------------------------------------------------ two and three nodes


def test_two_nodes_highest_wins_crash_and_preempt(lab: Lab, speakers) -> None:
    a_node, b_node = lab[0], lab[1]
    # A stale VIP left on B by a "previous run": the speaker removes it at start.
    ip(b_node.ns, "addr", "add", "192.0.2.100/32", "dev", b_node.ifname)
    a = speakers(a_node, [instance(priority=150, advert="1s")])
    b = speakers(b_node, [instance(priority=100, advert="1s")])
    a.wait_ready()
    b.wait_ready()
    a.wait_master(mdi(150, 1.0) + 3.0)
    # The stale VIP is gone and B does not hold it (B may have been master for a moment
    # if it started first: it yields on A's first advert).
    wait_until(b.holds_none, 2.0, "B without the VIP")
    assert b.state() == "BACKUP" and a.state() == "MASTER"
    assert b.inst()["master_ip"] == str(a_node.ip4)

    a.kill()  # crash: the process is gone, and so are its addresses
    t0 = time.monotonic()
    took = wait_holder(b, t0, mdi(100, 1.0) + 2.0)
    report(f"SIGKILL of master: backup held the VIP after {took:.3f}s (MDI {mdi(100, 1.0):.3f}s)")
    assert took <= mdi(100, 1.0) + MARGIN

    a.start()  # preempt (default): A takes the VIP back, B gives it up
    a.wait_ready()
    t0 = time.monotonic()
    back = wait_holder(a, t0, mdi(150, 1.0) + 3.0)
    wait_until(b.holds_none, 2.0, "B to release the VIP after A preempted")
    report(f"restarted higher-priority node preempted after {back:.3f}s")
    assert holders(lab.nodes) == [0]


def test_nopreempt_keeps_the_current_master(lab: Lab, speakers) -> None:
    adv = 0.3
    a_cfg = [instance(priority=150, advert="300ms", preempt=False)]
    a = speakers(lab[0], a_cfg)
    a.wait_ready()
    a.wait_master(mdi(150, adv) + 3.0)
    b = speakers(lab[1], [instance(priority=100, advert="300ms")])
    b.wait_ready()
    a.kill()
    t0 = time.monotonic()
    wait_holder(b, t0, mdi(100, adv) + 2.0)
    a.start()
    a.wait_ready()
    wait_until(lambda: a.state() == "BACKUP", 3.0, "A backup")
    # A hears B's lower adverts and, with nopreempt, follows them: for three of its
    # own master-down intervals nothing changes.
    deadline = time.monotonic() + 3 * mdi(150, adv)
    while time.monotonic() < deadline:
        assert holders(lab.nodes) == [1]
        assert a.state() == "BACKUP"
        time.sleep(0.05)  # sampling interval of an invariant, not a wait
    assert a.inst()["master_ip"] == str(lab[1].ip4)


def test_sigterm_hands_over_within_skew_and_leaves_no_vip(lab: Lab, speakers) -> None:
    a_node, b_node = lab[0], lab[1]
    a = speakers(a_node, [instance(priority=200, advert="1s")])
    b = speakers(b_node, [instance(priority=100, advert="1s")])
    a.wait_ready()
    b.wait_ready()
    a.wait_master(mdi(200, 1.0) + 3.0)
    wait_until(lambda: b.state() == "BACKUP" and b.holds_none(), 3.0, "B backup")
    assert a.proc is not None
    proc = a.proc
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    # Watch both sides: A must keep the VIP until B has it (no gap), and then drop it.
    b_at = a_gone_at = None
    deadline = t0 + 5.0
    while time.monotonic() < deadline and (b_at is None or a_gone_at is None):
        now = time.monotonic()
        if b_at is None and b.holds():
            b_at = now
        if a_gone_at is None and a.holds_none():
            a_gone_at = now
    assert b_at is not None, f"B never took over:\n{b.log_tail()}"
    assert a_gone_at is not None, f"A kept its VIP:\n{a.log_tail()}"
    rc = proc.wait(5)
    a.proc = None
    took = b_at - t0
    skew = skew_time(100, 1.0, 3)
    report(
        f"SIGTERM: backup held the VIP after {took:.3f}s (Skew_Time {skew:.3f}s); "
        f"old master released {1000 * (a_gone_at - b_at):+.0f} ms after that; exit {rc}"
    )
    assert took <= skew + MARGIN
    assert rc == 0
    assert a.holds_none() and b.holds()
    # The VIP was never absent: A released it only after B had it (polling granularity).
    assert a_gone_at >= b_at - 0.1


def test_three_nodes_crash_then_clean_stop(lab3: Lab, speakers) -> None:
    adv = 0.3
    prios = (150, 120, 100)
    sps = [speakers(lab3[i], [instance(priority=p, advert="300ms")]) for i, p in enumerate(prios)]
    for sp in sps:
        sp.wait_ready()
    sps[0].wait_master(mdi(150, adv) + 3.0)
    wait_until(lambda: holders(lab3.nodes) == [0], 2.0, "only node 0 holding")
    sps[0].kill()
    t0 = time.monotonic()
    took = wait_holder(sps[1], t0, mdi(120, adv) + 2.0)
    report(f"3 nodes, SIGKILL: priority 120 took over after {took:.3f}s (MDI {mdi(120, adv):.3f})")
    assert took <= mdi(120, adv) + MARGIN
    assert holders(lab3.nodes) == [1]
    assert sps[1].proc is not None
    t0 = time.monotonic()
    os.kill(sps[1].proc.pid, signal.SIGTERM)
    took = wait_holder(sps[2], t0, 3.0)
    assert sps[1].proc.wait(5) == 0
    sps[1].proc = None
    report(f"3 nodes, SIGTERM: priority 100 took over after {took:.3f}s")
    assert took <= skew_time(100, adv, 3) + MARGIN
    assert holders(lab3.nodes) == [2]


def test_link_down_fault_and_handover_with_notify(lab: Lab, speakers, tmp_path: Path) -> None:
    """Link down -> FAULT (VIPs removed) and the peer takes over; link up -> back.
    Notify scripts get keepalived's arguments at every transition."""
    adv = 0.3
    out = tmp_path / "notify.log"
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {out}\n')
    script.chmod(0o755)
    s = str(script)
    notify = {"master": s, "backup": s, "fault": s, "stop": s}
    a = speakers(lab[0], [instance(priority=150, advert="300ms", notify=notify)])
    a.wait_ready()
    a.wait_master(mdi(150, adv) + 3.0)
    b = speakers(lab[1], [instance(priority=100, advert="300ms")])
    b.wait_ready()
    wait_until(lambda: b.state() == "BACKUP", 3.0, "B backup")

    # Carrier loss on A (the bridge port goes down): FAULT, VIP removed, B takes over.
    set_link(lab.bridge_ns, f"p{lab[0].index}", False)
    t0 = time.monotonic()
    wait_until(lambda: a.state() == "FAULT", 2.0, "A in FAULT")
    assert a.holds_none()
    took = wait_holder(b, t0, mdi(100, adv) + 2.0)
    report(f"link down: A in FAULT, B held the VIP after {took:.3f}s")
    assert took <= mdi(100, adv) + MARGIN
    assert "interface eth0 down" in a.inst()["faults"][0]

    set_link(lab.bridge_ns, f"p{lab[0].index}", True)
    t0 = time.monotonic()
    back = wait_holder(a, t0, mdi(150, adv) + 3.0)
    wait_until(b.holds_none, 2.0, "B to release")
    report(f"link up: A preempted again after {back:.3f}s")
    assert a.term() == 0
    wait_until(lambda: out.exists() and "STOP" in out.read_text(), 5.0, "STOP notify")
    lines = out.read_text().splitlines()
    assert lines == [
        "INSTANCE VI_1 BACKUP 150",
        "INSTANCE VI_1 MASTER 150",
        "INSTANCE VI_1 FAULT 150",
        "INSTANCE VI_1 BACKUP 150",
        "INSTANCE VI_1 MASTER 150",
        "INSTANCE VI_1 STOP 150",
    ], f"{lines}\n{a.log_tail(80)}"


def test_randomised_kill_restart_never_two_holders(lab3: Lab, speakers) -> None:
    adv = 0.1
    prios = (150, 120, 100)
    seed = int(os.environ.get("PYLB_VRRP_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    report(f"random rounds seed {seed} (PYLB_VRRP_SEED to replay)")
    sps = [speakers(lab3[i], [instance(priority=p, advert="100ms")]) for i, p in enumerate(prios)]
    for sp in sps:
        sp.wait_ready()
    started = time.monotonic()
    settle = mdi(100, adv) + 0.3

    def converge(what: str) -> None:
        live = [i for i, sp in enumerate(sps) if sp.running()]
        want = [min(live, key=lambda i: -prios[i])] if live else []
        wait_until(lambda: holders(lab3.nodes) == want, 6.0, f"{what}: holders {want}")
        # After convergence: stable, and never two holders.
        end = time.monotonic() + settle
        while time.monotonic() < end:
            assert holders(lab3.nodes) == want, what
            time.sleep(0.03)  # sampling interval of an invariant, not a wait

    converge("start")
    for rnd in range(20):
        i = rng.randrange(3)
        sp = sps[i]
        if sp.running():
            action = rng.choice(("kill", "term"))
            if action == "kill":
                sp.kill()
            else:
                assert sp.term() == 0, sp.log_tail()
        else:
            action = "restart"
            sp.start()
            sp.wait_ready()
        converge(f"round {rnd}: {action} node {i}")
    report(f"20 random rounds in {time.monotonic() - started:.1f}s, one holder after each")


# --------------------------------------------------------------------- keepalived


KA_CASES = {
    # name: (version, advert seconds, auth, unicast)
    "v2-pass-multicast": (2, 1.0, "secret12", False),
    "v2-pass-unicast": (2, 1.0, "secret12", True),
    "v3-multicast": (3, 0.5, None, False),
    "v3-unicast": (3, 0.5, None, True),
}


@pytest.mark.parametrize("case", list(KA_CASES))
def test_interop_with_keepalived(lab: Lab, speakers, keepalived, case: str) -> None:
    """pylb master then keepalived master then pylb again, failover both ways."""
    version, adv, password, unicast = KA_CASES[case]
    p_node, k_node = lab[0], lab[1]
    advert = f"{int(adv * 1000)}ms"
    extra: dict = {}
    if password:
        extra["auth"] = {"type": "pass", "password": password}
    if unicast:
        extra["unicast"] = {"src": str(p_node.ip4), "peers": [str(k_node.ip4)]}
    kw = {
        "vrid": 61,
        "vips": [VIP],
        "version": version,
        "advert_int": adv,
        "auth_pass": password,
    }
    if unicast:
        kw.update(unicast_src=str(k_node.ip4), unicast_peers=[str(p_node.ip4)])

    # 1. pylb (100) alone becomes master; keepalived (150) joins and preempts it.
    p = speakers(p_node, [instance(vrid=61, priority=100, version=version, advert=advert, **extra)])
    p.wait_ready()
    p.wait_master(mdi(100, adv, version) + 3.0)
    k = keepalived(k_node, priority=150, **kw).start()
    k.wait_master(mdi(150, adv, version) + 4.0)
    wait_until(p.holds_none, 3.0, "pylb to yield to keepalived")
    assert p.state() == "BACKUP" and p.inst()["master_ip"] == str(k_node.ip4)
    assert p.inst()["counters"]["ok"] > 0

    # 2. keepalived crashes: pylb takes over within its Master_Down_Interval.
    k.kill()
    t0 = time.monotonic()
    took = wait_holder(p, t0, mdi(100, adv, version) + 2.0)
    report(f"{case}: keepalived SIGKILLed, pylb held the VIP after {took:.3f}s")
    assert took <= mdi(100, adv, version) + MARGIN

    # 3. keepalived back with nopreempt: it follows pylb as backup... (once the killed
    # one is gone, and without its pid files: keepalived refuses to start, "daemon is
    # already running", when a pid in them is alive, and pids are reused quickly here)
    wait_until(lambda: not ns_pids(k_node.ns), 5.0, "the killed keepalived to be gone")
    for f in (k.pidfile, k.vrrp_pidfile):
        f.unlink(missing_ok=True)
    k = keepalived(k_node, priority=150, preempt=False, **kw).start()
    end = time.monotonic() + mdi(150, adv, version) + 0.5
    while time.monotonic() < end:
        assert p.holds() and k.holds_none(), k.log_tail()
        time.sleep(0.05)  # sampling interval of an invariant, not a wait
    # 4. ... and takes over when pylb stops cleanly (priority 0 -> Skew_Time).
    assert p.proc is not None
    t0 = time.monotonic()
    os.kill(p.proc.pid, signal.SIGTERM)
    try:
        took = wait_holder(k, t0, 3.0)
    except BaseException:
        print(f"keepalived:\n{k.log_tail(80)}\npylb:\n{p.log_tail(40)}", file=sys.stderr)
        raise
    assert p.proc.wait(5) == 0
    p.proc = None
    report(f"{case}: pylb SIGTERMed, keepalived held the VIP after {took:.3f}s")
    assert took <= skew_time(150, adv, version) + MARGIN
    assert p.holds_none()
    assert not any(
        "bad" in line.lower() or "invalid" in line.lower() for line in k.log_tail(200).splitlines()
    ), k.log_tail()


# -------------------------------------------------------------------- bad adverts


def test_bad_adverts_ignored_and_counted_good_one_obeyed(lab: Lab, speakers) -> None:
    a_node, t_node = lab[0], lab[1]
    a = speakers(
        a_node,
        [
            instance(
                priority=100,
                version=2,
                advert="1s",
                auth={"type": "pass", "password": "secret12"},
                garp_master_repeat=1,
            )
        ],
    )
    a.wait_ready()
    a.wait_master(mdi(100, 1.0, 2) + 3.0)
    with inside(t_node.ns):
        sock = VrrpSocket(t_node.ifname, 4)
    cfg = InstanceConfig(
        name="T",
        interface=t_node.ifname,
        vrid=51,
        virtual_ipaddresses=(ipaddress.ip_interface(VIP),),
        version=2,
        auth=AuthConf("secret12"),
    )
    good = packet.encode(packet.advert_for(cfg, 200), src=sock.src)
    other = packet.advert_for(cfg, 200)
    wrong_pw = packet.encode(
        packet.Advert(2, 51, 200, 1.0, other.addresses, 1, b"secret13"), src=sock.src
    )
    wrong_vrid = packet.encode(
        packet.Advert(2, 52, 200, 1.0, other.addresses, 1, AuthConf("secret12").wire), src=sock.src
    )
    bad_sum = good[:6] + bytes([good[6] ^ 0xFF, good[7]]) + good[8:]

    def counters() -> dict:
        return a.inst()["counters"]

    try:
        cases = [("ttl", good, 254), ("checksum", bad_sum, 255), ("auth", wrong_pw, 255)]
        cases.append(("vrid_unknown", wrong_vrid, 255))
        for reason, data, ttl in cases:
            before = counters()[reason]
            sock.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            for _ in range(3):
                assert sock.send(data)
            wait_until(lambda r=reason, b=before: counters()[r] >= b + 3, 3.0, f"{reason} counted")
            assert a.holds() and a.state() == "MASTER", reason
        c = counters()
        report(
            "bad adverts counted: "
            + ", ".join(f"{k}={c[k]}" for k in ("ttl", "checksum", "auth", "vrid_unknown"))
        )
        # The same advert with TTL 255 is obeyed: priority 200 > 100, A steps down.
        sock.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        assert sock.send(good)
        wait_until(a.holds_none, 2.0, "A to yield to the valid priority-200 advert")
        assert a.state() == "BACKUP" and a.inst()["master_ip"] == str(t_node.ip4)
        text = query(a.control, "show vrrp")
        assert "ttl=3" in text and "checksum=3" in text and "VI_1" in text
        assert show_vrrp_text(a.snapshot()).splitlines()[0].startswith("VI_1: vrid 51")
    finally:
        sock.close()


# ------------------------------------------------------------------ isolation, jitter


def test_advert_interval_jitter_under_cpu_burn(lab: Lab, speakers) -> None:
    """The speaker's own process keeps a 1 s advert within 20 ms while other processes
    in its namespace burn every core. Measured where it matters: on a peer's socket."""
    a_node, peer = lab[0], lab[1]
    a = speakers(a_node, [instance(priority=255, advert="1s")])  # owner: master at once
    a.wait_ready()
    a.wait_master(3.0)
    burners = [
        subprocess.Popen(
            ["ip", "netns", "exec", a_node.ns, sys.executable, "-c", "while True: pass"],
            start_new_session=True,
        )
        for _ in range(os.cpu_count() or 2)
    ]
    with inside(peer.ns):
        sock = VrrpSocket(peer.ifname, 4)
    # Arrival times stamped by the peer's kernel as each advert comes in (the wire's
    # spacing), not when this process, which competes with the burners too, gets to read.
    sock.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        arrivals: list[float] = []
        deadline = time.monotonic() + 10.0
        while len(arrivals) < 7 and time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], 1.5)
            if not r:
                continue
            _data, anc, _flags, addr = sock.sock.recvmsg(4096, 512)
            if ipaddress.ip_address(addr[0]) != a_node.ip4:
                continue
            stamps = [
                struct.unpack("@qq", d[:16])
                for level, kind, d in anc
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
            ]
            assert stamps, "no arrival timestamp"
            arrivals.append(stamps[0][0] + stamps[0][1] / 1e9)
        assert len(arrivals) == 7, "adverts missing"
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        jitter = max(abs(g - 1.0) for g in gaps)
        report(
            f"advert gaps under CPU burn: {', '.join(f'{1000 * g:.1f}' for g in gaps)} ms; "
            f"jitter {1000 * jitter:.1f} ms"
        )
        assert jitter < 0.020
        assert a.holds()
    finally:
        sock.close()
        for b in burners:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(b.pid, 9)
            b.wait(5)


# ------------------------------------------------------------------ proxy health, sync


def test_proxy_heartbeat_lowers_priority(lab: Lab, speakers) -> None:
    """The master's heartbeat: a critical listener down lowers the priority by
    proxy_weight and the peer takes over; healthy again -> back; silence -> unhealthy."""
    adv = 0.3
    r, w = os.pipe()
    beat = {"on": True, "down": []}
    stop = threading.Event()

    def heartbeat() -> None:  # the master's side, about three times per timeout
        while not stop.wait(0.25):
            if beat["on"]:
                os.write(w, encode_heartbeat(True, beat["down"]))

    t = threading.Thread(target=heartbeat, daemon=True)
    t.start()
    try:
        a = speakers(
            lab[0],
            [instance(priority=150, advert="300ms", track={"proxy_weight": 100})],
            vrrp_extra={"health_timeout": "1s"},
            extra_args=["--health-fd", str(r)],
            pass_fds=[r],
        )
        b = speakers(lab[1], [instance(priority=100, advert="300ms")])
        a.wait_ready()
        b.wait_ready()
        a.wait_master(mdi(150, adv) + 3.0)
        wait_until(lambda: b.holds_none() and b.state() == "BACKUP", 3.0, "B backup")
        beat["down"] = ["keystone"]  # a critical listener has no healthy server
        t0 = time.monotonic()
        took = wait_holder(b, t0, mdi(100, adv) + 2.0)
        wait_until(a.holds_none, 2.0, "A to yield")
        inst = a.inst()
        assert inst["effective_priority"] == 50 and inst["base_priority"] == 150
        assert a.snapshot()["proxy"]["critical_down"] == ["keystone"]
        report(f"proxy unhealthy: priority 150 -> 50, B took over after {took:.3f}s")
        beat["down"] = []
        wait_holder(a, time.monotonic(), mdi(150, adv) + 2.0)
        assert a.inst()["effective_priority"] == 150
        beat["on"] = False  # the master falls silent: after health_timeout, unhealthy
        t0 = time.monotonic()
        took = wait_holder(b, t0, 1.0 + mdi(100, adv) + 2.0)
        report(f"no heartbeat: B took over after {took:.3f}s (timeout 1 s)")
        assert a.snapshot()["proxy"]["healthy"] is False
    finally:
        stop.set()
        t.join(2)
        os.close(r)
        os.close(w)


def test_sync_group_fails_over_together(lab: Lab, speakers, tmp_path: Path) -> None:
    adv = 0.3
    flag = tmp_path / "vi2-broken"
    chk = tmp_path / "chk.sh"
    chk.write_text(f"#!/bin/sh\ntest ! -e {flag}\n")
    chk.chmod(0o755)
    track = {"scripts": [{"name": "chk", "path": str(chk), "interval": "200ms", "fall": 1}]}

    def pair(prio: int, with_track: bool) -> list[dict]:
        vi2 = instance("VI_2", vrid=52, priority=prio, advert="300ms", vips=["192.0.2.101/24"])
        if with_track:
            vi2["track"] = track
        return [instance("VI_1", vrid=51, priority=prio, advert="300ms"), vi2]

    group = [{"name": "G1", "instances": ["VI_1", "VI_2"]}]
    a = speakers(lab[0], pair(150, True), sync_groups=group)
    b = speakers(lab[1], pair(100, False), sync_groups=group)
    a.wait_ready()
    b.wait_ready()
    a.wait_master(mdi(150, adv) + 3.0)
    wait_until(lambda: b.holds_none() and b.state("VI_2") == "BACKUP", 3.0, "B backup")
    flag.touch()  # VI_2's track script fails: VI_2 FAULT, and VI_1 with it
    t0 = time.monotonic()
    wait_holder(b, t0, mdi(100, adv) + 3.0)
    assert a.holds_none()
    assert a.state("VI_1") == "FAULT" and a.state("VI_2") == "FAULT"
    report(f"sync group: both VIPs moved after {time.monotonic() - t0:.3f}s")
    flag.unlink()
    wait_holder(a, time.monotonic(), mdi(150, adv) + 3.0)
    wait_until(b.holds_none, 2.0, "B to release both")


def test_frozen_master_steps_down_when_it_wakes(lab: Lab, speakers) -> None:
    """STYLE.md 5.7: a master whose process was stopped past its peers' takeover window
    must not go on as master beside the new one: its first late timer steps it down."""
    adv = 0.3
    a = speakers(lab[0], [instance(priority=150, advert="300ms")])
    b = speakers(lab[1], [instance(priority=100, advert="300ms")])
    a.wait_ready()
    b.wait_ready()
    a.wait_master(mdi(150, adv) + 3.0)
    wait_until(lambda: b.holds_none() and b.state() == "BACKUP", 3.0, "B backup")
    assert a.proc is not None
    os.kill(a.proc.pid, 19)  # SIGSTOP: the whole speaker is frozen (a stalled VM)
    try:
        wait_holder(b, time.monotonic(), mdi(100, adv) + 2.0)
    finally:
        os.kill(a.proc.pid, 18)  # SIGCONT
    t0 = time.monotonic()
    wait_until(lambda: not a.holds(), 2.0, "the woken master to drop the VIP")
    report(f"frozen master woke and released the VIP after {1000 * (time.monotonic() - t0):.0f} ms")
    assert a.inst()["counters"].get("late_step_down", 0) >= 1, a.log_tail()
    # Then the ordinary protocol: A (150) preempts B (100) once.
    wait_holder(a, time.monotonic(), mdi(150, adv) + 3.0)
    wait_until(b.holds_none, 2.0, "B to release")
    assert holders(lab.nodes) == [0]
