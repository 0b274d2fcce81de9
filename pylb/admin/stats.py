"""What the stats page, /stats.csv, /stats.json, /metrics and `show stat` report.

Pure functions over the runtime objects (`Backend`, `Server`, `ListenContext`): no I/O,
no clock except the `now` passed in, so every format is unit-tested with plain objects.

The CSV is HAProxy's `show stat` (management guide §9.1): the same header, the same 100
static fields in the same order (`pxname` ... `uweight`), one FRONTEND row, one row per
server and one BACKEND row per listener, each line ending with a comma as HAProxy's
does. Fields pylb has no value for are left empty, as HAProxy leaves the fields that do
not apply, so tools written for HAProxy's CSV (monitoring plugins, haproxy_exporter,
hatop-like scripts) parse it unchanged.

Server status words are HAProxy's: UP, DOWN, MAINT, DRAIN, "no check" (checks not
enabled), and "UP 1/3" / "DOWN 1/2" while a rise/fall transition is pending.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pylb import __version__
from pylb.balance.base import Balancer
from pylb.proxy.backend import AdminState, Backend, Server
from pylb.proxy.state import ListenContext

# HAProxy management guide 9.1, "static fields" 0..99, in order. Positions never change.
CSV_FIELDS: tuple[str, ...] = (
    "pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout",
    "dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight", "act",
    "bck", "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid", "sid",
    "throttle", "lbtot", "tracked", "type", "rate", "rate_lim", "rate_max", "check_status",
    "check_code", "check_duration", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
    "hrsp_5xx", "hrsp_other", "hanafail", "req_rate", "req_rate_max", "req_tot", "cli_abrt",
    "srv_abrt", "comp_in", "comp_out", "comp_byp", "comp_rsp", "lastsess", "last_chk",
    "last_agt", "qtime", "ctime", "rtime", "ttime", "agent_status", "agent_code",
    "agent_duration", "check_desc", "agent_desc", "check_rise", "check_fall", "check_health",
    "agent_rise", "agent_fall", "agent_health", "addr", "cookie", "mode", "algo", "conn_rate",
    "conn_rate_max", "conn_tot", "intercepted", "dcon", "dses", "wrew", "connect", "reuse",
    "cache_lookups", "cache_hits", "srv_icur", "src_ilim", "qtime_max", "ctime_max",
    "rtime_max", "ttime_max", "eint", "idle_conn_cur", "safe_conn_cur", "used_conn_cur",
    "need_conn_est", "uweight",
)  # fmt: skip
CSV_HEADER = "# " + ",".join(CSV_FIELDS) + ","

TYPE_FRONTEND, TYPE_BACKEND, TYPE_SERVER = 0, 1, 2

# HAProxy's enum healthcheck_status values (check-t.h), for `show servers state`.
HCHK_NUMBER: dict[str, int] = {
    "UNK": 0, "INI": 1, "HANA": 4, "SOCKERR": 5, "L4OK": 6, "L4TOUT": 7, "L4CON": 8,
    "L6OK": 9, "L6TOUT": 10, "L6RSP": 11, "L7TOUT": 12, "L7RSP": 13, "L7OK": 15,
    "L7OKC": 16, "L7STS": 17,
}  # fmt: skip

Row = dict[str, Any]  # CSV field name -> value (None / missing = empty)


@dataclass(slots=True)
class Snapshot:
    """Everything one rendering needs, gathered by a provider at request time.

    `backends` and `contexts` are the live runtime objects (read, never copied: building
    a snapshot costs nothing). `writer` (per listener) and `vrrp` (instances) come from
    the Galera and VRRP subsystems when they run; None means "not running here", and the
    page then omits their sections.
    """

    backends: Sequence[Backend]
    contexts: Mapping[str, ListenContext] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    writer: Mapping[str, Mapping[str, Any]] | None = None
    vrrp: Sequence[Mapping[str, Any]] | None = None
    draining: bool = False
    now: float = 0.0  # wall clock (time.time()) of the snapshot; 0 = take it at render

    def backend(self, name: str) -> Backend | None:
        for b in self.backends:
            if b.name == name:
                return b
        return None


class StatsProvider(Protocol):
    """What the stats server and the runtime socket ask for: a fresh snapshot, and
    (optional subsystems) the text answers of `show vrrp` / `show writer L`."""

    def snapshot(self) -> Snapshot: ...


class WorkerProvider:
    """The provider of one worker process: its backends and listen contexts, plus hooks
    the Galera (issue 5) and VRRP (issue 4) subsystems set when they run here.

    `writer_hook()` returns {listener: {"writer": name, ...}} and `vrrp_hook()` a list of
    instance dicts ({"name", "state", "priority", "vips", ...}); unset = not running.
    """

    __slots__ = ("info", "started", "vrrp_hook", "worker", "writer_hook")

    def __init__(self, worker: Any, *, info: Mapping[str, Any] | None = None) -> None:
        self.worker = worker  # pylb.proxy.worker.Worker (duck-typed: .state, .contexts, .config)
        self.info = dict(info or {})
        self.started = time.time()
        self.writer_hook: Any = None
        self.vrrp_hook: Any = None

    def snapshot(self) -> Snapshot:
        w = self.worker
        state = w.state
        backends = list(state.backends.values()) if state is not None else []
        info = {
            "pid": os.getpid(),
            "uptime": max(0, int(time.time() - self.started)),
            "maxconn": state.maxconn if state is not None else 0,
            "curr_conns": state.actconn if state is not None else 0,
            **self.info,
        }
        return Snapshot(
            backends=backends,
            contexts=dict(w.contexts),
            info=info,
            writer=self.writer_hook() if self.writer_hook else None,
            vrrp=self.vrrp_hook() if self.vrrp_hook else None,
            draining=bool(state.draining) if state is not None else False,
            now=time.time(),
        )


# -- status words ---------------------------------------------------------------------------


def _check_state(server: Server) -> Any:
    """The running check's rise/fall state (pylb.health.state.CheckState) or None."""
    return getattr(server.check, "state", None)


def server_status(server: Server) -> str:
    """HAProxy's status word for a server row."""
    if server.admin is AdminState.MAINT:
        return "MAINT"
    st = _check_state(server)
    if not server.oper_up:
        health = getattr(st, "health", 0) if st is not None else 0
        if st is not None and 0 < health < st.rise:
            return f"DOWN {health}/{st.rise}"  # going up
        return "DOWN"
    if server.admin is AdminState.DRAIN:
        return "DRAIN"
    if server.check is None:
        return "no check"
    if st is not None:
        top = st.rise + st.fall - 1
        if st.rise <= st.health < top:
            return f"UP {st.health - st.rise + 1}/{st.fall}"  # going down
    return "UP"


def status_class(status: str) -> str:
    """A coarse class for colouring (page) and the metrics' `state` label."""
    word = status.split(" ", 1)[0]
    if status.startswith(("UP ", "DOWN ")):
        return "going-down" if word == "UP" else "going-up"
    return {"UP": "up", "DOWN": "down", "MAINT": "maint", "DRAIN": "drain"}.get(word, "nocheck")


def backend_status(backend: Backend) -> str:
    """UP while at least one server can take a new session (active or backup), else DOWN."""
    return "UP" if any(Balancer.eligible(s) for s in backend.servers) else "DOWN"


def check_status_text(server: Server) -> str:
    """`check_status` column: the short code, prefixed "* " while a check runs."""
    st = server.check_status
    if st is None:
        return ""
    running = bool(getattr(server.check, "running", False))
    return ("* " if running else "") + st.short


def last_check(server: Server) -> str:
    """HAProxy's LastChk column: "L7STS/503 in 2ms"."""
    st = server.check_status
    if st is None:
        return ""
    s = st.short
    if st.layer7 and server.check_code is not None:
        s += f"/{server.check_code}"
    if server.check_duration is not None:
        s += f" in {int(server.check_duration * 1000)}ms"
    return s


# -- rows -----------------------------------------------------------------------------------


def _num(v: float | None) -> int | None:
    return None if v is None else int(v)


def frontend_row(ctx: ListenContext | None, backend: Backend, iid: int, draining: bool) -> Row:
    conf = backend.conf
    slim = conf.maxconn if conf.maxconn is not None else (ctx.worker.maxconn if ctx else None)
    scur = ctx.feconn if ctx is not None else backend.cur_conns
    stot = ctx.total_conns if ctx is not None else backend.total_conns
    full = slim is not None and scur >= slim
    return {
        "pxname": backend.name,
        "svname": "FRONTEND",
        "scur": scur,
        "smax": backend.max_conns,
        "slim": slim,
        "stot": stot,
        "bin": backend.bytes_in,
        "bout": backend.bytes_out,
        "dreq": 0,
        "dresp": 0,
        "ereq": 0,
        "status": "STOP" if draining else ("FULL" if full else "OPEN"),
        "pid": 1,
        "iid": iid,
        "sid": 0,
        "type": TYPE_FRONTEND,
        "mode": conf.mode,
        "conn_tot": stot,
        "dcon": ctx.denied_conns if ctx is not None else backend.denied,
    }


def server_row(server: Server, iid: int, sid: int, now: float) -> Row:
    conf = server.conf
    st = _check_state(server)
    status = server_status(server)
    cs = server.check_status
    row: Row = {
        "pxname": server.backend.name,
        "svname": server.name,
        "qcur": 0,
        "qmax": 0,
        "scur": server.cur_conns,
        "smax": server.max_conns,
        "slim": conf.maxconn,
        "stot": server.total_conns,
        "bin": server.bytes_in,
        "bout": server.bytes_out,
        "dresp": 0,
        "econ": server.failed_conns,
        "eresp": server.resp_errors,
        "wretr": server.retries,
        "wredis": server.redispatches,
        "status": status,
        "weight": server.weight,
        "act": 0 if server.backup else 1,
        "bck": 1 if server.backup else 0,
        "lastchg": max(0, int(now - server.last_change)),
        "pid": 1,
        "iid": iid,
        "sid": sid,
        "lbtot": server.total_conns,
        "type": TYPE_SERVER,
        "addr": str(server.address),
        "mode": server.backend.conf.mode,
        "uweight": server.weight,
    }
    if st is not None:
        row["chkfail"] = getattr(st, "failed_checks", 0)
        row["chkdown"] = getattr(st, "down_transitions", 0)
        row["check_rise"] = st.rise
        row["check_fall"] = st.fall
        row["check_health"] = st.health
    if cs is not None:
        row["check_status"] = check_status_text(server)
        row["check_code"] = server.check_code if cs.layer7 else None
        row["check_duration"] = (
            _num(server.check_duration * 1000) if server.check_duration is not None else None
        )
        row["check_desc"] = cs.description
        row["last_chk"] = server.check_desc
    return row


def backend_row(backend: Backend, iid: int, now: float) -> Row:
    servers = backend.servers
    usable = [s for s in servers if Balancer.eligible(s)]
    lastchg = max((s.last_change for s in servers), default=None)
    return {
        "pxname": backend.name,
        "svname": "BACKEND",
        "qcur": backend.queue.count,  # one FIFO per backend (pylb.proxy.queue)
        "qmax": backend.queue.max,
        "scur": backend.cur_conns,
        "smax": backend.max_conns,
        "slim": backend.conf.maxconn,
        "stot": backend.total_conns,
        "bin": backend.bytes_in,
        "bout": backend.bytes_out,
        "dreq": 0,
        "dresp": 0,
        "econ": sum(s.failed_conns for s in servers),
        "eresp": sum(s.resp_errors for s in servers),
        "wretr": sum(s.retries for s in servers),
        "wredis": sum(s.redispatches for s in servers),
        "status": backend_status(backend),
        "weight": sum(s.weight for s in usable if not s.backup),
        "act": sum(1 for s in usable if not s.backup),
        "bck": sum(1 for s in usable if s.backup),
        "chkdown": sum(getattr(_check_state(s), "down_transitions", 0) for s in servers),
        "lastchg": None if lastchg is None else max(0, int(now - lastchg)),
        "pid": 1,
        "iid": iid,
        "sid": 0,
        "lbtot": sum(s.total_conns for s in servers),
        "type": TYPE_BACKEND,
        "mode": backend.conf.mode,
        "algo": backend.conf.balance,
        "uweight": sum(s.weight for s in servers if not s.backup),
    }


def iter_rows(snap: Snapshot) -> Iterator[Row]:
    """FRONTEND, servers, BACKEND for each listener, in configuration order (HAProxy's
    order within a `listen` proxy)."""
    now = snap.now or time.time()
    for iid, backend in enumerate(snap.backends, start=1):
        ctx = snap.contexts.get(backend.name)
        yield frontend_row(ctx, backend, iid, snap.draining)
        for sid, server in enumerate(backend.servers, start=1):
            yield server_row(server, iid, sid, now)
        yield backend_row(backend, iid, now)


# -- formats --------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


def to_csv(snap: Snapshot) -> str:
    """HAProxy `show stat` CSV: header, one line per row, trailing commas, final "\\n"."""
    out = io.StringIO()
    out.write(CSV_HEADER + "\n")
    writer = csv.writer(out, lineterminator="\n")  # quotes only cells with , " or newline
    for row in iter_rows(snap):
        writer.writerow([_cell(row.get(f)) for f in CSV_FIELDS] + [""])
    return out.getvalue()


def _server_doc(row: Row, server: Server) -> dict[str, Any]:
    doc = {k: v for k, v in row.items() if v is not None}
    doc["admin"] = server.admin.value
    doc["oper_up"] = server.oper_up
    doc["backup"] = server.backup
    doc["state_class"] = status_class(row["status"])
    doc["last_check"] = last_check(server)
    doc["last_change"] = server.last_change
    return doc


def to_json(snap: Snapshot) -> dict[str, Any]:
    """The /stats.json document: per listener its frontend, servers and backend (the CSV
    fields that have a value, plus a few non-HAProxy ones), and the optional sections."""
    now = snap.now or time.time()
    listeners = []
    for iid, backend in enumerate(snap.backends, start=1):
        ctx = snap.contexts.get(backend.name)
        fe_row = frontend_row(ctx, backend, iid, snap.draining)
        fe = {k: v for k, v in fe_row.items() if v is not None}
        be = {k: v for k, v in backend_row(backend, iid, now).items() if v is not None}
        servers = [
            _server_doc(server_row(s, iid, sid, now), s)
            for sid, s in enumerate(backend.servers, start=1)
        ]
        writer = getattr(backend.balancer, "writer", None)
        listeners.append(
            {
                "name": backend.name,
                "mode": backend.conf.mode,
                "balance": backend.conf.balance,
                "critical": backend.conf.critical,
                "binds": [str(a) for a in backend.conf.binds],
                "using_backups": backend.balancer.using_backups,
                "writer": writer.name if writer is not None else None,
                "frontend": fe,
                "backend": be,
                "servers": servers,
            }
        )
    doc: dict[str, Any] = {
        "info": {"name": "pylb", "version": __version__, **snap.info},
        "time": now,
        "listeners": listeners,
    }
    if snap.writer is not None:
        doc["writer"] = {k: dict(v) for k, v in snap.writer.items()}
    if snap.vrrp is not None:
        doc["vrrp"] = [dict(v) for v in snap.vrrp]
    return doc


# -- Prometheus -----------------------------------------------------------------------------

SERVER_STATES = ("UP", "DOWN", "MAINT", "DRAIN", "NOLB", "no check")


class PylbCollector:
    """prometheus_client custom collector: metrics are computed at scrape time from a
    fresh snapshot (no second bookkeeping of counters). Names follow HAProxy's own
    exporter (haproxy_server_current_sessions -> pylb_server_current_sessions ...),
    labels `proxy` and `server`."""

    def __init__(self, provider: StatsProvider) -> None:
        self.provider = provider

    def describe(self) -> list:
        return []  # metrics vary with the configuration: no fixed description at register

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        snap = self.provider.snapshot()
        now = snap.now or time.time()

        def gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=list(labels))

        px = ("proxy",)
        sv = ("proxy", "server")
        info = InfoMetricFamily("pylb_process", "pylb process information")
        info.add_metric([], {"version": __version__})
        yield info
        m_up = gauge("pylb_process_start_time_seconds", "Start time of the process", ())
        started = snap.info.get("uptime")
        if isinstance(started, int):
            m_up.add_metric([], now - started)
            yield m_up
        cur = gauge("pylb_process_current_connections", "Client connections in this worker", ())
        cur.add_metric([], float(snap.info.get("curr_conns", 0) or 0))
        yield cur

        fe_cur = gauge("pylb_frontend_current_sessions", "Current sessions", px)
        fe_max = gauge("pylb_frontend_max_sessions", "Maximum observed sessions", px)
        fe_lim = gauge("pylb_frontend_limit_sessions", "Configured session limit", px)
        fe_tot = counter("pylb_frontend_sessions", "Total sessions", px)
        fe_bin = counter("pylb_frontend_bytes_in", "Request bytes in", px)
        fe_bout = counter("pylb_frontend_bytes_out", "Response bytes out", px)
        fe_den = counter("pylb_frontend_denied_connections", "Connections refused by maxconn", px)
        be_up = gauge("pylb_backend_up", "1 when a server can take new sessions", px)
        be_act = gauge("pylb_backend_active_servers", "Usable active servers", px)
        be_bck = gauge("pylb_backend_backup_servers", "Usable backup servers", px)
        be_cur = gauge("pylb_backend_current_sessions", "Current sessions", px)
        be_max = gauge("pylb_backend_max_sessions", "Maximum observed sessions", px)
        be_tot = counter("pylb_backend_sessions", "Total sessions", px)
        be_bin = counter("pylb_backend_bytes_in", "Bytes from clients to servers", px)
        be_bout = counter("pylb_backend_bytes_out", "Bytes from servers to clients", px)
        be_w = gauge("pylb_backend_weight", "Total weight of usable active servers", px)
        be_econ = counter("pylb_backend_connection_errors", "Connect errors", px)
        be_eresp = counter("pylb_backend_response_errors", "Response errors", px)
        be_retr = counter("pylb_backend_retry_warnings", "Connect retries", px)
        be_redis = counter("pylb_backend_redispatch_warnings", "Redispatches", px)
        s_status = gauge("pylb_server_status", "Current status of the server", (*sv, "state"))
        s_up = gauge("pylb_server_up", "1 when the server can take new sessions", sv)
        s_cur = gauge("pylb_server_current_sessions", "Current sessions", sv)
        s_max = gauge("pylb_server_max_sessions", "Maximum observed sessions", sv)
        s_lim = gauge("pylb_server_limit_sessions", "Configured maxconn (absent: none)", sv)
        s_tot = counter("pylb_server_sessions", "Total sessions", sv)
        s_bin = counter("pylb_server_bytes_in", "Bytes from clients to the server", sv)
        s_bout = counter("pylb_server_bytes_out", "Bytes from the server to clients", sv)
        s_econ = counter("pylb_server_connection_errors", "Connect errors", sv)
        s_eresp = counter("pylb_server_response_errors", "Response errors", sv)
        s_retr = counter("pylb_server_retry_warnings", "Connect retries", sv)
        s_redis = counter("pylb_server_redispatch_warnings", "Redispatches away", sv)
        s_w = gauge("pylb_server_weight", "Effective weight", sv)
        s_chg = gauge("pylb_server_last_change_seconds", "Seconds since the last state change", sv)
        s_cfail = counter("pylb_server_check_failures", "Failed checks while up", sv)
        s_cdown = counter("pylb_server_check_up_down", "UP to DOWN transitions", sv)
        s_cdur = gauge(
            "pylb_server_check_duration_seconds", "Duration of the last health check", sv
        )
        s_ccode = gauge("pylb_server_check_code", "HTTP code of the last layer-7 check", sv)

        for backend in snap.backends:
            name = backend.name
            ctx = snap.contexts.get(name)
            fe = frontend_row(ctx, backend, 0, snap.draining)
            fe_cur.add_metric([name], fe["scur"])
            fe_max.add_metric([name], fe["smax"])
            if fe["slim"] is not None:
                fe_lim.add_metric([name], fe["slim"])
            fe_tot.add_metric([name], fe["stot"])
            fe_bin.add_metric([name], backend.bytes_in)
            fe_bout.add_metric([name], backend.bytes_out)
            fe_den.add_metric([name], fe["dcon"])
            be = backend_row(backend, 0, now)
            be_up.add_metric([name], 1.0 if be["status"] == "UP" else 0.0)
            be_act.add_metric([name], be["act"])
            be_bck.add_metric([name], be["bck"])
            be_cur.add_metric([name], be["scur"])
            be_max.add_metric([name], be["smax"])
            be_tot.add_metric([name], be["stot"])
            be_bin.add_metric([name], be["bin"])
            be_bout.add_metric([name], be["bout"])
            be_w.add_metric([name], be["weight"])
            be_econ.add_metric([name], be["econ"])
            be_eresp.add_metric([name], be["eresp"])
            be_retr.add_metric([name], be["wretr"])
            be_redis.add_metric([name], be["wredis"])
            for s in backend.servers:
                lv = [name, s.name]
                status = server_status(s)
                word = "no check" if status == "no check" else status.split(" ", 1)[0]
                for state in SERVER_STATES:
                    s_status.add_metric([*lv, state], 1.0 if state == word else 0.0)
                s_up.add_metric(lv, 1.0 if Balancer.eligible(s) else 0.0)
                s_cur.add_metric(lv, s.cur_conns)
                s_max.add_metric(lv, s.max_conns)
                if s.conf.maxconn is not None:
                    s_lim.add_metric(lv, s.conf.maxconn)
                s_tot.add_metric(lv, s.total_conns)
                s_bin.add_metric(lv, s.bytes_in)
                s_bout.add_metric(lv, s.bytes_out)
                s_econ.add_metric(lv, s.failed_conns)
                s_eresp.add_metric(lv, s.resp_errors)
                s_retr.add_metric(lv, s.retries)
                s_redis.add_metric(lv, s.redispatches)
                s_w.add_metric(lv, s.weight)
                s_chg.add_metric(lv, max(0.0, now - s.last_change))
                st = _check_state(s)
                if st is not None:
                    s_cfail.add_metric(lv, getattr(st, "failed_checks", 0))
                    s_cdown.add_metric(lv, getattr(st, "down_transitions", 0))
                if s.check_duration is not None:
                    s_cdur.add_metric(lv, s.check_duration)
                if s.check_code is not None:
                    s_ccode.add_metric(lv, s.check_code)
        yield from (
            fe_cur, fe_max, fe_lim, fe_tot, fe_bin, fe_bout, fe_den,
            be_up, be_act, be_bck, be_cur, be_max, be_tot, be_bin, be_bout, be_w,
            be_econ, be_eresp, be_retr, be_redis,
            s_status, s_up, s_cur, s_max, s_lim, s_tot, s_bin, s_bout, s_econ, s_eresp,
            s_retr, s_redis, s_w, s_chg, s_cfail, s_cdown, s_cdur, s_ccode,
        )  # fmt: skip
        if snap.vrrp is not None:
            v_state = gauge("pylb_vrrp_master", "1 when this node is MASTER", ("instance",))
            v_prio = gauge("pylb_vrrp_priority", "Effective priority", ("instance",))
            for inst in snap.vrrp:
                iname = str(inst.get("name", ""))
                v_state.add_metric([iname], 1.0 if inst.get("state") == "MASTER" else 0.0)
                prio = inst.get("priority")
                if isinstance(prio, int | float):
                    v_prio.add_metric([iname], prio)
            yield v_state
            yield v_prio


def metrics_text(provider: StatsProvider) -> bytes:
    """Prometheus text exposition (version 0.0.4) of one scrape."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PylbCollector(provider))  # type: ignore[arg-type]  # duck-typed Collector
    return generate_latest(registry)


PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
