"""The runtime API: HAProxy's stats-socket commands that operators script against.

Pure apart from mutating the live `Server` objects it is given: `execute(line, provider)`
parses one command and returns the text to answer (never raises for bad input: the
error is the answer, worded as HAProxy words it, so scripts grepping for "No such
server." keep working). Every answer ends with an empty line, as in HAProxy's
non-interactive mode, so a reader knows the output was not truncated.

State changes go through `Backend.server_changed()` so the balancer rebuilds its group at
once. Semantics (HAProxy's):

- `disable server L/S` = `set server L/S state maint`: no traffic at all, checks paused;
  sessions in progress are not cut.
- `set server L/S state drain`: no new sessions (the balancer skips the server), the
  sessions in progress finish normally; checks go on, so the page still shows health.
- `enable server L/S` = `set server L/S state ready`.
- `set server L/S weight N|N%`: 0..256, or a percentage of the configured weight;
  weight 0 takes no new traffic, like drain.

Supported: help, show info, show stat [json], show servers state [L], disable/enable
server, set server ... state|weight, show vrrp, show writer L.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable

from pylb import __version__
from pylb.admin.stats import HCHK_NUMBER, Snapshot, StatsProvider, to_csv, to_json
from pylb.proxy.backend import AdminState, Backend, Server

log = logging.getLogger("pylb.admin")
NOTICE = 25  # pylb.logsetup.NOTICE

HELP = """\
  help                                    : this message
  show info                               : report information about the running process
  show stat [json]                        : report counters for each proxy and server
  show servers state [<backend>]          : dump volatile server information
  disable server <bk>/<srv>               : disable a server for maintenance (MAINT)
  enable server <bk>/<srv>                : enable a disabled server (READY)
  set server <bk>/<srv> state <st>        : ready | drain | maint
  set server <bk>/<srv> weight <w>[%]     : change a server's weight (0..256)
  show vrrp                               : VRRP instances and their state
  show writer <listen>                    : current Galera writer of a listener
  set writer <listen> <server>            : switch the writer now (old sessions closed)
"""

UNKNOWN = "Unknown command. Please enter one of the following commands only :\n" + HELP
MAX_WEIGHT = 256
SERVERS_STATE_HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr "
    "srv_agent_addr srv_agent_port"
)


class CommandError(Exception):
    """A command failed: the message is the answer."""


def _answer(text: str) -> str:
    """Terminate an answer with the empty line HAProxy's CLI prints after each command."""
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n"


def find_server(snap: Snapshot, ref: str) -> tuple[Backend, Server]:
    """`backend/server` -> objects, with HAProxy's error words."""
    if "/" not in ref:
        raise CommandError("Require 'backend/server'.")
    be_name, _, srv_name = ref.partition("/")
    backend = snap.backend(be_name)
    if backend is None:
        raise CommandError("No such backend.")
    for s in backend.servers:
        if s.name == srv_name:
            return backend, s
    raise CommandError("No such server.")


def parse_weight(text: str, initial: int) -> int:
    """HAProxy's server_parse_weight_change_request(): "N" absolute 0..256, "N%" relative
    to the configured weight. Digits only (no sign, no garbage): outside input."""
    if not text:
        raise CommandError("Require <weight> or <weight%>.")
    relative = text.endswith("%")
    digits = text[:-1] if relative else text
    if not digits.isdigit() or len(digits) > 6:
        raise CommandError("Weight string empty or preceded by garbage")
    value = int(digits)
    if relative:
        if value > 100:
            raise CommandError("Relative weight can only be set between 0 and 100% inclusive.")
        return min(MAX_WEIGHT, initial * value // 100)
    if value > MAX_WEIGHT:
        raise CommandError("Absolute weight can only be between 0 and 256 inclusive.")
    return value


def set_admin(backend: Backend, server: Server, state: AdminState) -> None:
    """Change the administrative state (idempotent) and log it in HAProxy's words."""
    old = server.admin
    if old is state:
        return
    server.admin = state
    backend.server_changed(server)
    act, bck = backend.usable_count()
    ref = f"{backend.name}/{server.name}"
    if state is AdminState.MAINT:
        log.warning(
            "Server %s is going DOWN for maintenance. %d active and %d backup servers left. "
            "%d sessions active, 0 requeued, 0 remaining in queue.",
            ref, act, bck, server.cur_conns,
        )  # fmt: skip
    elif state is AdminState.DRAIN:
        log.log(NOTICE, "Server %s enters drain state.", ref)
    elif old is AdminState.MAINT:
        log.log(
            NOTICE,
            "Server %s is %s (leaving forced maintenance).",
            ref,
            "UP" if server.oper_up else "DOWN",
        )
    else:
        log.log(NOTICE, "Server %s leaves drain state.", ref)
    if act + bck == 0 and old is AdminState.READY:
        log.critical("backend %s has no server available!", backend.name)


def set_weight(backend: Backend, server: Server, weight: int) -> None:
    if server.weight == weight:
        return
    server.weight = weight
    backend.server_changed(server)


# -- show commands ----------------------------------------------------------------------


def show_info(snap: Snapshot) -> str:
    info = snap.info
    lines = [
        "Name: pylb",
        f"Version: {__version__}",
        f"Pid: {info.get('pid', os.getpid())}",
        f"Uptime_sec: {info.get('uptime', 0)}",
        f"Maxconn: {info.get('maxconn', 0)}",
        f"CurrConns: {info.get('curr_conns', 0)}",
        f"Nbproc: {info.get('workers', 1)}",
        f"Process_num: {info.get('process_num', 1)}",
        f"Stopping: {1 if snap.draining else 0}",
        f"Listeners: {len(snap.backends)}",
        f"Servers: {sum(len(b.servers) for b in snap.backends)}",
    ]
    return "\n".join(lines) + "\n"


def _check_result(server: Server) -> int:
    """HAProxy chk_result: 0 unknown, 2 failed, 3 passed."""
    st = server.check_status
    if st is None:
        return 0
    return 3 if st.passed else 2


def show_servers_state(snap: Snapshot, only: str | None) -> str:
    backends = snap.backends
    if only is not None:
        b = snap.backend(only)
        if b is None:
            raise CommandError(f"Can't find backend '{only}'.")
        backends = [b]
    now = snap.now or time.time()
    lines = ["1", SERVERS_STATE_HEADER]
    for be_id, backend in enumerate(snap.backends, start=1):
        if backend not in backends:
            continue
        for srv_id, s in enumerate(backend.servers, start=1):
            admin = {AdminState.READY: 0, AdminState.DRAIN: 0x08, AdminState.MAINT: 0x01}[s.admin]
            if s.conf.disabled and s.admin is AdminState.MAINT:
                admin = 0x04  # in maintenance because of the configuration
            st = getattr(s.check, "state", None)
            chk_state = 0
            if s.check is not None:
                chk_state = 0x02 | (0x08 if s.admin is AdminState.MAINT else 0x04)
                if getattr(s.check, "running", False):
                    chk_state |= 0x01
            status = HCHK_NUMBER.get(s.check_status.short, 0) if s.check_status else 0
            fields = [
                be_id, backend.name, srv_id, s.name, s.address.host,
                2 if s.oper_up else 0, admin, s.weight, s.conf.weight,
                max(0, int(now - s.last_change)), status, _check_result(s),
                st.health if st is not None else 0, chk_state, 0, 0, 0, "-",
                s.address.port, "-", 0, s.conf.check_port or 0, s.conf.check_address or "-",
                "-", 0,
            ]  # fmt: skip
            lines.append(" ".join(str(f) for f in fields))
    return "\n".join(lines) + "\n"


def apply_servers_state(text: str, backends: list[Backend] | tuple[Backend, ...]) -> int:
    """Carry runtime state across a reload, as HAProxy's `load-server-state-from-file`:
    `text` is the old generation's `show servers state`; every server still configured
    with the same name and address gets back its operational state (checks keep their
    verdict), its operator-set MAINT/DRAIN and its runtime weight (only when the
    configured weight did not change meanwhile: a new config value wins). Lines that do
    not parse or name a server that is gone are skipped. Returns the servers restored."""
    by_name = {b.name: b for b in backends}
    restored = 0
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":
        return 0
    for line in lines[1:]:
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 19 or not all(f[i].isdigit() for i in (5, 6, 7, 8, 18)):
            continue
        backend = by_name.get(f[1])
        if backend is None:
            continue
        server = next((s for s in backend.servers if s.name == f[3]), None)
        if server is None or server.address.host != f[4] or str(server.address.port) != f[18]:
            continue
        op_state, admin = int(f[5]), int(f[6])
        uweight, iweight = int(f[7]), int(f[8])
        if admin & 0x01:
            server.admin = AdminState.MAINT
        elif admin & 0x08:
            server.admin = AdminState.DRAIN
        elif not server.conf.disabled:
            server.admin = AdminState.READY
        if server.conf.check:
            server.oper_up = op_state != 0
        if iweight == server.conf.weight and uweight <= MAX_WEIGHT:
            server.weight = uweight
        backend.server_changed(server)
        restored += 1
    return restored


def show_vrrp(snap: Snapshot) -> str:
    if snap.vrrp is None:
        return "VRRP is not available in this process.\n"
    if not snap.vrrp:
        return "No VRRP instance configured.\n"
    if all("vrid" in inst and "counters" in inst for inst in snap.vrrp):
        # the speaker's own snapshot (`pylb run`): its `show vrrp` wording
        from pylb.vrrp.control import show_vrrp_text

        return show_vrrp_text({"instances": list(snap.vrrp)})
    out = []
    for inst in snap.vrrp:
        out.append(f"{inst.get('name', '?')}:")
        for k, v in inst.items():
            if k == "name":
                continue
            if isinstance(v, list | tuple):
                v = " ".join(str(x) for x in v)
            out.append(f"  {k}: {v}")
    return "\n".join(out) + "\n"


def _writer_backend(snap: Snapshot, name: str):
    backend = snap.backend(name)
    if backend is None:
        raise CommandError("No such backend.")
    if getattr(backend, "writer", None) is None:
        raise CommandError(f"Listener {name} does not use 'balance writer-pin'.")
    return backend


def show_writer(snap: Snapshot, name: str) -> str:
    from pylb.galera.writer import show_writer as writer_text

    return writer_text(_writer_backend(snap, name))


def set_writer(snap: Snapshot, name: str, server: str) -> str:
    """Manual switch; the old writer's sessions are closed at once (pylb.galera.writer)."""
    from pylb.galera.writer import WriterError
    from pylb.galera.writer import set_writer as switch

    backend = _writer_backend(snap, name)
    try:
        return switch(backend, server)
    except WriterError as e:
        raise CommandError(str(e)) from None


# -- dispatch ---------------------------------------------------------------------------


def _set_server(snap: Snapshot, words: list[str]) -> str:
    # set server <bk>/<srv> state <st> | weight <w>
    if len(words) < 3:
        raise CommandError("Require 'backend/server'.")
    backend, server = find_server(snap, words[2])
    what = words[3] if len(words) > 3 else ""
    arg = words[4] if len(words) > 4 else ""
    if what == "state":
        states = {"ready": AdminState.READY, "drain": AdminState.DRAIN, "maint": AdminState.MAINT}
        if arg not in states:
            raise CommandError("'set server <srv> state' expects 'ready', 'drain' and 'maint'.")
        set_admin(backend, server, states[arg])
        return ""
    if what == "weight":
        set_weight(backend, server, parse_weight(arg, server.conf.weight))
        return ""
    raise CommandError("'set server <srv>' only supports 'state' and 'weight'.")


def _run(words: list[str], snap: Snapshot) -> str:
    w = words
    match w:
        case ["help"]:
            return HELP
        case ["show", "info", *_]:
            return show_info(snap)
        case ["show", "stat"]:
            return to_csv(snap)
        case ["show", "stat", "json"]:
            return json.dumps(to_json(snap), separators=(",", ":")) + "\n"
        case ["show", "servers", "state"]:
            return show_servers_state(snap, None)
        case ["show", "servers", "state", name]:
            return show_servers_state(snap, name)
        case ["disable", "server", ref]:
            backend, server = find_server(snap, ref)
            set_admin(backend, server, AdminState.MAINT)
            return ""
        case ["enable", "server", ref]:
            backend, server = find_server(snap, ref)
            set_admin(backend, server, AdminState.READY)
            return ""
        case ["disable" | "enable", "server"]:
            raise CommandError("Require 'backend/server'.")
        case ["set", "server", *_]:
            return _set_server(snap, w)
        case ["show", "vrrp"]:
            return show_vrrp(snap)
        case ["show", "writer", name]:
            return show_writer(snap, name)
        case ["show", "writer"]:
            raise CommandError("Require a listener name: show writer <listen>.")
        case ["set", "writer", name, server]:
            return set_writer(snap, name, server)
        case ["set", "writer", *_]:
            raise CommandError("Usage: set writer <listen> <server>.")
    return UNKNOWN


def execute(line: str, provider: StatsProvider | Callable[[], Snapshot]) -> str:
    """Run one command line (no ';' splitting) and return its answer (always ends with an
    empty line). Loop thread only: it may change servers' state."""
    words = line.split()
    if not words:
        return ""
    snap = provider() if callable(provider) else provider.snapshot()
    try:
        return _answer(_run(words, snap))
    except CommandError as e:
        return _answer(str(e))


def execute_many(text: str, provider: StatsProvider | Callable[[], Snapshot]) -> str:
    """A line may hold several commands separated by ';' (HAProxy's non-interactive
    `echo "show info;show stat" | socat`), answered in order."""
    out = []
    for line in text.splitlines():
        for cmd in line.split(";"):
            out.append(execute(cmd, provider))
    return "".join(out)
