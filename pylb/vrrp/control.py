"""`show vrrp`: the speaker's snapshot as text, and a client for its control socket.

Kept apart from `speaker.py` so the master and the admin socket can format and query
the speaker without importing scapy (the speaker's codec) into their process.

Control protocol (unix stream socket, one command per connection, as HAProxy's runtime
API): the client writes one line, the speaker answers and closes.

    show vrrp          -> the text below
    show vrrp json     -> the JSON snapshot (`Speaker.snapshot()`)
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

DROP_KEYS = (
    "ttl",
    "checksum",
    "version",
    "vrid_unknown",
    "auth",
    "interval",
    "own",
    "addr_mismatch",
    "malformed",
)


def show_vrrp_text(snap: dict[str, Any]) -> str:
    """Human-readable `show vrrp` from a JSON snapshot: one block per instance."""
    lines: list[str] = []
    for inst in snap.get("instances", ()):
        master = inst.get("master_ip") or "-"
        if inst.get("master_priority") is not None:
            master += f" (priority {inst['master_priority']})"
        lines.append(
            f"{inst['name']}: vrid {inst['vrid']} on {inst['interface']} v{inst['version']}"
            f" state {inst['state']}"
        )
        lines.append(
            f"  priority {inst['priority']} (base {inst['base_priority']}, "
            f"effective {inst['effective_priority']}), master {master}"
        )
        last = inst.get("last_transition")
        if last:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last["wall"]))
            lines.append(
                f"  last transition {last['from']} -> {last['to']} at {when}"
                f" ({last['ago']:.1f}s ago), {inst['transitions']} transitions"
            )
        else:
            lines.append("  no transition yet")
        if inst.get("faults"):
            lines.append(f"  fault: {'; '.join(inst['faults'])}")
        c = inst.get("counters", {})
        drops = " ".join(f"{k}={c.get(k, 0)}" for k in DROP_KEYS)
        lines.append(f"  received ok={c.get('ok', 0)} dropped: {drops}")
        lines.append(
            f"  sent adverts={c.get('adverts_sent', 0)} priority0={c.get('priority_zero_sent', 0)}"
            f" priority0_rcvd={c.get('priority_zero_rcvd', 0)}"
            f" send_errors={c.get('send_errors', 0)}"
            f" garp={c.get('garp_sent', 0)}"
        )
    proxy = snap.get("proxy")
    if proxy is not None:
        state = "healthy" if proxy.get("healthy") else "UNHEALTHY"
        down = proxy.get("critical_down") or []
        extra = f" (critical down: {', '.join(down)})" if down else ""
        lines.append(f"proxy: {state}{extra}, {proxy.get('heartbeats', 0)} heartbeats")
    sched = snap.get("scheduler")
    if sched is not None:
        lines.append(f"scheduler: max lag {1000 * sched.get('max_lag', 0.0):.1f} ms")
    return "\n".join(lines) + "\n"


def query(path: str, command: str = "show vrrp json", timeout: float = 2.0) -> str:
    """Send one command to a speaker's control socket; return its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode()


def query_json(path: str, timeout: float = 2.0) -> dict[str, Any]:
    return json.loads(query(path, "show vrrp json", timeout))


RUN_SOCKET = "vrrp.sock"  # the speaker's control socket in `pylb run`'s private run dir


def speaker_control_path(raw_vrrp: Any, rundir: str) -> str:
    """Where the speaker forked by `pylb run` serves `show vrrp`: `vrrp.control_socket`
    when the config sets one, else `vrrp.sock` in the master's 0700 run directory. The
    master and the workers (whose admin socket relays `show vrrp` to it) both call this
    with the raw `Config.vrrp` mapping, so they agree without passing the path around."""
    configured = raw_vrrp.get("control_socket") if isinstance(raw_vrrp, dict) else None
    if isinstance(configured, str) and configured:
        return configured
    return os.path.join(rundir, RUN_SOCKET)


HOOK_TIMEOUT = 0.5  # the speaker answers from memory; the caller is a worker's loop


def speaker_hook(path: str) -> Callable[[], list[dict[str, Any]]]:
    """`WorkerProvider.vrrp_hook` for a worker of `pylb run`: the speaker's instances,
    asked over its control socket at each `show vrrp` / stats page / scrape.

    A blocking exchange on a unix socket with a short timeout: the speaker answers at
    once from memory, and this runs only for operator requests, never for traffic. An
    unreachable speaker (restarting, or not started yet) is one pseudo-instance saying
    so, not an exception in the worker."""

    def hook() -> list[dict[str, Any]]:
        try:
            snap = query_json(path, HOOK_TIMEOUT)
        except (OSError, ValueError) as e:
            return [{"name": "speaker", "state": f"UNREACHABLE ({e.__class__.__name__})"}]
        instances = snap.get("instances") if isinstance(snap, dict) else None
        return list(instances) if isinstance(instances, list) else []

    return hook
