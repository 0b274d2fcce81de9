"""The HTML stats page: HAProxy's stats page, reduced to what pylb has.

One renderer in Python: the page is served whole at `/`, and a 30-line script re-fetches
`/?part=body` every `refresh` ms and swaps the content in, so the page updates without
reloading (no flicker, scroll position kept) while the table markup exists once. Without
JavaScript the page still refreshes through <noscript><meta refresh>.

Per listener: a table with the FRONTEND row, one row per server (status coloured like
HAProxy's: green UP, red DOWN, brown MAINT, blue DRAIN, yellow/orange transitions, grey
"no check"), and the BACKEND row. Sections for the Galera writer and the VRRP instances
appear only when those subsystems provided data. Every value is HTML-escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pylb import __version__
from pylb.admin.stats import (
    Snapshot,
    backend_row,
    frontend_row,
    last_check,
    server_row,
    status_class,
)

CSS = """
body{font-family:Arial,Helvetica,sans-serif;font-size:12px;margin:8px;background:#fff;color:#000}
h1{font-size:18px;margin:4px 0;color:#fff;background:#20377f;padding:4px 8px}
h2{font-size:14px;margin:14px 0 4px 0}
table.px{border-collapse:collapse;margin-bottom:12px;min-width:900px}
table.px th,table.px td{border:1px solid #999;padding:2px 5px;text-align:right;white-space:nowrap}
table.px th{background:#b8c4e0}
table.px td.name,table.px th.name{text-align:left}
table.px caption{text-align:left;font-weight:bold;background:#30a0b0;color:#fff;padding:3px 6px}
tr.frontend td,tr.backend td{background:#ccc;font-weight:bold}
tr.up td{background:#c0ffc0}
tr.down td{background:#ff9090}
tr.maint td{background:#c07820;color:#fff}
tr.drain td{background:#80c0ff}
tr.going-down td{background:#ffd020}
tr.going-up td{background:#ff9a40}
tr.nocheck td{background:#e0e0e0}
tr.backup.up td{background:#c0c0ff}
.info{margin:4px 0 10px 0}
.legend span{display:inline-block;padding:1px 6px;margin-right:4px;border:1px solid #999}
"""

SCRIPT = """
(function(){
  var ms = %d;
  function tick(){
    fetch('?part=body', {cache:'no-store', credentials:'same-origin'})
      .then(function(r){ if(!r.ok) throw new Error(r.status); return r.text(); })
      .then(function(t){ document.getElementById('content').innerHTML = t; })
      .catch(function(){})
      .finally(function(){ setTimeout(tick, ms); });
  }
  setTimeout(tick, ms);
})();
"""

SERVER_COLUMNS = (
    "Server", "Status", "LastChk", "Wght", "Act", "Bck", "Cur", "Max", "Limit", "Total",
    "Bytes in", "Bytes out", "ECon", "EResp", "Retr", "Redis", "Chk fail", "Chk down",
    "LastChg", "Address",
)  # fmt: skip


def esc(v: Any) -> str:
    return "" if v is None else html.escape(str(v), quote=True)


def human_duration(seconds: int | None) -> str:
    """HAProxy's LastChg style: 45s, 3m12s, 2h5m, 4d3h."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _td(v: Any, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}>{esc(v)}</td>"


def _row(cells: Sequence[str], cls: str, title: str = "", row_id: str = "") -> str:
    t = f' title="{esc(title)}"' if title else ""
    i = f' id="{esc(row_id)}"' if row_id else ""
    return f'<tr{i} class="{cls}"{t}>' + "".join(cells) + "</tr>"


def render_listener(snap: Snapshot, iid: int, now: float) -> str:
    backend = snap.backends[iid - 1]
    ctx = snap.contexts.get(backend.name)
    conf = backend.conf
    fe = frontend_row(ctx, backend, iid, snap.draining)
    be = backend_row(backend, iid, now)
    binds = ", ".join(str(a) for a in conf.binds)
    out = [
        f'<table class="px" id="px-{esc(backend.name)}">',
        f"<caption>{esc(backend.name)} &mdash; {esc(conf.mode)}, balance "
        f"{esc(conf.balance)}, bind {esc(binds)}"
        + (" &mdash; critical" if conf.critical else "")
        + "</caption>",
        "<tr>"
        + "".join(
            f'<th class="name">{c}</th>' if c == "Server" else f"<th>{c}</th>"
            for c in SERVER_COLUMNS
        )
        + "</tr>",
    ]
    out.append(
        _row(
            [
                _td("Frontend", "name"), _td(fe["status"]), _td(""), _td(""), _td(""),
                _td(""), _td(fe["scur"]), _td(fe["smax"]), _td(fe["slim"]), _td(fe["stot"]),
                _td(fe["bin"]), _td(fe["bout"]), _td(""), _td(""), _td(""), _td(""),
                _td(""), _td(""), _td(""), _td(f"denied {fe['dcon']}"),
            ],
            "frontend",
        )
    )  # fmt: skip
    for sid, s in enumerate(backend.servers, start=1):
        r = server_row(s, iid, sid, now)
        cls = status_class(r["status"]) + (" backup" if s.backup else "")
        title = ""
        if r.get("check_desc"):
            title = r["check_desc"] + (f": {r['last_chk']}" if r.get("last_chk") else "")
        out.append(
            _row(
                [
                    _td(s.name, "name"), _td(r["status"], "status"), _td(last_check(s), "lastchk"),
                    _td(r["weight"]), _td("Y" if r["act"] else "-"), _td("Y" if r["bck"] else "-"),
                    _td(r["scur"]), _td(r["smax"]), _td(r["slim"] or "-"),
                    _td(r["stot"]), _td(r["bin"]), _td(r["bout"]), _td(r["econ"]), _td(r["eresp"]),
                    _td(r["wretr"]), _td(r["wredis"]), _td(r.get("chkfail", "")),
                    _td(r.get("chkdown", "")), _td(human_duration(r["lastchg"])), _td(r["addr"]),
                ],
                cls,
                title,
                f"srv-{backend.name}-{s.name}",
            )
        )  # fmt: skip
    out.append(
        _row(
            [
                _td("Backend", "name"), _td(be["status"]), _td(""), _td(be["weight"]),
                _td(be["act"]), _td(be["bck"]), _td(be["scur"]), _td(be["smax"]),
                _td(be["slim"]), _td(be["stot"]), _td(be["bin"]), _td(be["bout"]),
                _td(be["econ"]), _td(be["eresp"]), _td(be["wretr"]), _td(be["wredis"]),
                _td(""), _td(be["chkdown"]), _td(human_duration(be["lastchg"])), _td(""),
            ],
            "backend",
        )
    )  # fmt: skip
    out.append("</table>")
    return "\n".join(out)


def render_writer(writer: Mapping[str, Mapping[str, Any]]) -> str:
    out = [
        '<h2>Galera writer</h2><table class="px" id="writer">',
        "<tr><th class='name'>Listener</th><th>Writer</th><th class='name'>Details</th></tr>",
    ]
    for name, info in writer.items():
        details = ", ".join(f"{k}: {v}" for k, v in info.items() if k != "writer")
        out.append(
            f"<tr><td class='name'>{esc(name)}</td><td>{esc(info.get('writer', '-'))}</td>"
            f"<td class='name'>{esc(details)}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def render_vrrp(instances: Sequence[Mapping[str, Any]]) -> str:
    cols = ("name", "state", "priority", "effective_priority", "interface", "vrid", "vips",
            "master", "last_transition")  # fmt: skip
    out = [
        '<h2>VRRP instances</h2><table class="px" id="vrrp">',
        "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>",
    ]
    for inst in instances:
        state = str(inst.get("state", ""))
        cls = {"MASTER": "up", "BACKUP": "nocheck", "FAULT": "down"}.get(state, "")
        cells = []
        for c in cols:
            v = inst.get(c, "")
            if isinstance(v, list | tuple):
                v = " ".join(str(x) for x in v)
            cells.append(_td(v))
        out.append(_row(cells, cls))
    out.append("</table>")
    return "\n".join(out)


def render_body(snap: Snapshot) -> str:
    """The part that refreshes: info line, legend, one table per listener, extras."""
    now = snap.now or time.time()
    info = snap.info
    parts = [
        '<div class="info">'
        + esc(
            f"pid {info.get('pid', '?')}, uptime {human_duration(info.get('uptime'))}, "
            f"current connections {info.get('curr_conns', 0)}/{info.get('maxconn', '?')}"
        )
        + f" &mdash; updated {esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now)))}"
        + (" &mdash; <b>stopping</b>" if snap.draining else "")
        + "</div>",
        '<div class="legend"><span class="l-up" style="background:#c0ffc0">UP</span>'
        '<span style="background:#ffd020">UP, going down</span>'
        '<span style="background:#ff9a40">DOWN, going up</span>'
        '<span style="background:#ff9090">DOWN</span>'
        '<span style="background:#80c0ff">DRAIN</span>'
        '<span style="background:#c07820;color:#fff">MAINT</span>'
        '<span style="background:#e0e0e0">no check</span></div>',
    ]
    for iid in range(1, len(snap.backends) + 1):
        parts.append(render_listener(snap, iid, now))
    if snap.writer:
        parts.append(render_writer(snap.writer))
    if snap.vrrp:
        parts.append(render_vrrp(snap.vrrp))
    return "\n".join(parts)


def render_page(snap: Snapshot, refresh_ms: int = 2000) -> str:
    """The whole page; `refresh_ms` is the client-side refresh period."""
    refresh_ms = max(100, int(refresh_ms))
    secs = max(1, refresh_ms // 1000)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>pylb statistics</title><style>{CSS}</style>"
        f'<noscript><meta http-equiv="refresh" content="{secs}"></noscript>'
        "</head><body>"
        f"<h1>pylb {esc(__version__)} statistics</h1>"
        '<p class="links"><a href="stats.csv">CSV</a> | <a href="stats.json">JSON</a> | '
        '<a href="metrics">Prometheus</a></p>'
        f'<div id="content">{render_body(snap)}</div>'
        f"<script>{SCRIPT % refresh_ms}</script>"
        "</body></html>\n"
    )
