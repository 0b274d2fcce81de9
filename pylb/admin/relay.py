"""The runtime API across `workers: N` processes, and the server state hand-over.

Each worker has its own runtime objects (servers, counters, health checks), so with
several workers a runtime command must reach all of them. Every worker serves the plain
runtime API (`pylb.admin.commands`) on a private control socket in the master's 0700 run
directory; worker slot 0 also serves the public `global.admin_socket` through `Relay`:

- state changes (`disable|enable server`, `set server ...`, `set writer`) run locally,
  then are sent to every peer of the same generation (a peer that is restarting gets the
  server state from a sibling when it starts, see `fetch_servers_state`);
- `show stat` (and the stats server's /stats.csv and /metrics) sums the peers' counters
  into slot 0's rows (`aggregate_csv`, `aggregate_metrics`): sessions, bytes, errors,
  totals add up; status, weight and check fields are slot 0's (all workers check the same
  servers); `smax` is the sum of the per-worker maxima (an upper bound);
- everything else (`show info`, `show servers state`, `show stat json`, `show vrrp`,
  `show writer`) is slot 0's answer.

A starting worker (after a reload or a crash) copies `show servers state` from a serving
worker before it accepts (`fetch_servers_state`), which is HAProxy's
`load-server-state-from-file` without the file: unchanged servers keep their health,
maintenance/drain state and runtime weight.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pylb.admin.commands import execute, execute_many
from pylb.admin.stats import CSV_FIELDS, CSV_HEADER, StatsProvider, metrics_text
from pylb.proxy.backend import Backend

log = logging.getLogger("pylb.admin")

PEER_TIMEOUT = 2.0  # a peer is a local process answering from memory: seconds is plenty
STATE_TIMEOUT = 1.0  # a starting worker waits at most this long per source
MAX_ANSWER = 64 * 1024 * 1024

# counters that add up over workers (everything else comes from slot 0's row)
SUMMED: frozenset[str] = frozenset(
    (
        "qcur", "qmax", "scur", "smax", "stot", "bin", "bout", "dreq", "dresp", "ereq",
        "econ", "eresp", "wretr", "wredis", "lbtot", "conn_tot", "dcon", "dses",
        "cli_abrt", "srv_abrt", "req_tot", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
        "hrsp_5xx", "hrsp_other",
    )
)  # fmt: skip
_SUMMED_IDX = tuple(i for i, name in enumerate(CSV_FIELDS) if name in SUMMED)
# commands that change state: every worker must run them
MUTATING = (("disable", "server"), ("enable", "server"), ("set", "server"), ("set", "writer"))


def _rows(text: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text)) if row and not row[0].startswith("#")]


def aggregate_csv(texts: Sequence[str]) -> str:
    """`show stat` CSV of several workers -> one, in the first one's row order: the
    SUMMED counters added up per (pxname, svname), the rest from the first. Pure.
    A row only a peer has (a peer on another config) is ignored."""
    if not texts:
        return CSV_HEADER + "\n"
    base = _rows(texts[0])
    index = {(r[0], r[1]): r for r in base if len(r) >= len(CSV_FIELDS)}
    for text in texts[1:]:
        for row in _rows(text):
            mine = index.get((row[0], row[1])) if len(row) >= 2 else None
            if mine is None or len(row) < len(CSV_FIELDS):
                continue
            for i in _SUMMED_IDX:
                a, b = mine[i], row[i]
                if b.isdigit() and len(b) < 20:
                    mine[i] = str((int(a) if a.isdigit() and len(a) < 20 else 0) + int(b))
    out = io.StringIO()
    out.write(CSV_HEADER + "\n")
    writer = csv.writer(out, lineterminator="\n")  # the same quoting as to_csv()
    writer.writerows(base)
    return out.getvalue()


async def ask(path: str, command: str, timeout: float = PEER_TIMEOUT) -> str:
    """One runtime API exchange over a unix socket (not the data path: streams are
    fine). Raises OSError / asyncio.TimeoutError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(command.replace("\n", " ").encode() + b"\n")
            await writer.drain()
            writer.write_eof()
            data = await reader.read(MAX_ANSWER)
            while True:
                more = await reader.read(MAX_ANSWER)
                if not more:
                    break
                data += more
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return data.decode("utf-8", "replace")


async def fetch_servers_state(sources: Sequence[str]) -> tuple[str, str] | None:
    """(`show servers state` text, the source it came from) from the first source that
    answers, or None. Sources are tried in the given order (best first)."""
    for path in sources:
        try:
            text = await ask(path, "show servers state", STATE_TIMEOUT)
        except (OSError, TimeoutError) as e:
            log.debug("no server state from %s: %s", path, e)
            continue
        if text.startswith("1\n"):
            return text, path
    return None


class Relay:
    """Slot 0's handler of the public runtime API: local answer plus the peers."""

    __slots__ = ("peers", "provider")

    def __init__(self, provider: StatsProvider, peers: Callable[[], Sequence[str]]) -> None:
        self.provider = provider
        self.peers = peers  # the control sockets of the other workers of this generation

    async def handle(self, text: str) -> str:
        out = []
        for line in text.splitlines() or [text]:
            for cmd in line.split(";"):
                out.append(await self.one(cmd))
        return "".join(out)

    async def one(self, cmd: str) -> str:
        words = cmd.split()
        local = execute(cmd, self.provider)
        peers = list(self.peers())
        if not peers or not words:
            return local
        if tuple(words[:2]) in MUTATING:
            answers = await asyncio.gather(*(ask(p, cmd) for p in peers), return_exceptions=True)
            for path, a in zip(peers, answers, strict=True):
                if isinstance(a, BaseException):
                    log.warning("runtime command %r not applied by %s: %s", cmd, path, a)
            return local
        if words == ["show", "stat"]:
            return await self._aggregate(local, peers) + "\n"
        return local

    def http_routes(self) -> dict[bytes, tuple[str, Callable[[], Awaitable[bytes]]]]:
        """The stats server's answers that need every worker (see pylb.admin.http)."""
        from pylb.admin.http import CSV_PATHS, CSV_TYPE
        from pylb.admin.stats import PROMETHEUS_CONTENT_TYPE

        async def csv_bytes() -> bytes:
            return (await self.stat_csv()).encode()

        routes = dict.fromkeys(CSV_PATHS, (CSV_TYPE, csv_bytes))
        routes[b"/metrics"] = (PROMETHEUS_CONTENT_TYPE, self.metrics)
        return routes

    async def stat_csv(self) -> str:
        """`show stat` of every worker, summed: the stats server's /stats.csv."""
        return await self._aggregate(execute("show stat", self.provider), list(self.peers()))

    async def metrics(self) -> bytes:
        """Prometheus text of every worker, summed: the stats server's /metrics."""
        local = metrics_text(self.provider).decode()
        peers = list(self.peers())
        answers = await asyncio.gather(
            *(ask(p, "show metrics") for p in peers), return_exceptions=True
        )
        for path, a in zip(peers, answers, strict=True):
            if isinstance(a, BaseException):
                log.warning("show metrics: no answer from %s: %s", path, a)
        return aggregate_metrics([local] + [a for a in answers if isinstance(a, str)])

    async def _aggregate(self, local: str, peers: Sequence[str]) -> str:
        answers = await asyncio.gather(
            *(ask(p, "show stat") for p in peers), return_exceptions=True
        )
        for path, a in zip(peers, answers, strict=True):
            if isinstance(a, BaseException):
                log.warning("show stat: no answer from %s: %s", path, a)
        return aggregate_csv([local] + [a for a in answers if isinstance(a, str)])


def inherited_health(text: str, backends: Sequence[Backend]) -> dict[str, dict[str, int]]:
    """{listener: {server: check health counter}} from a `show servers state` text, for
    the servers still configured with the same name and address (what
    `apply_servers_state` restores): their new checks resume at that counter instead of
    the configured `init-state`, so a reload neither resets a half-failed server nor
    brings a down one back without `rise` passed checks."""
    by_name = {b.name: b for b in backends}
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if (
            len(f) < 19
            or line.startswith("#")
            or not all(f[i].isdigit() and len(f[i]) < 7 for i in (12, 13))
        ):
            continue
        if not int(f[13]) & 0x02:  # the old worker ran no check on it: nothing to resume
            continue
        backend = by_name.get(f[1])
        if backend is None:
            continue
        server = next((s for s in backend.servers if s.name == f[3]), None)
        if server is None or server.address.host != f[4] or str(server.address.port) != f[18]:
            continue
        out.setdefault(backend.name, {})[server.name] = int(f[12])
    return out


# gauges that add up over workers (the other gauges are states: slot 0's value)
SUMMED_GAUGES: frozenset[str] = frozenset(
    (
        "pylb_process_current_connections",
        "pylb_frontend_current_sessions",
        "pylb_frontend_max_sessions",
        "pylb_backend_current_sessions",
        "pylb_backend_max_sessions",
        "pylb_server_current_sessions",
        "pylb_server_max_sessions",
    )
)


def aggregate_metrics(texts: Sequence[str]) -> bytes:
    """Prometheus text of several workers -> one: counters and the SUMMED_GAUGES added up
    per series (name + labels), every other series as the first text has it. Uses
    prometheus_client's own parser and writer, so the output is what a scrape of one
    process would look like."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    if not texts:
        return b""
    families = list(text_string_to_metric_families(texts[0]))
    index: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Any, int]] = {}
    for fam in families:
        if fam.type == "counter" or fam.name in SUMMED_GAUGES:
            for i, sample in enumerate(fam.samples):
                index[(sample.name, tuple(sorted(sample.labels.items())))] = (fam, i)
    for text in texts[1:]:
        try:
            other = list(text_string_to_metric_families(text))
        except ValueError:  # a peer answered garbage: its numbers are left out
            continue
        for fam in other:
            for sample in fam.samples:
                hit = index.get((sample.name, tuple(sorted(sample.labels.items()))))
                if hit is not None:
                    mine, i = hit
                    old = mine.samples[i]
                    mine.samples[i] = old._replace(value=old.value + sample.value)

    class _Merged:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]  # duck-typed Collector
    return generate_latest(registry)


async def local_handler(provider: StatsProvider, text: str) -> str:
    """A worker's private control socket: the runtime API plus `show metrics` (this
    worker's Prometheus text, for slot 0's /metrics) and `show health` (JSON health
    summary: the master's heartbeat to the VRRP speaker, `pylb.vrrp.heartbeat`)."""
    if text.strip() == "show metrics":
        return metrics_text(provider).decode()
    if text.strip() == "show health":
        from pylb.vrrp.heartbeat import health_answer

        return health_answer(provider.snapshot().backends)
    return execute_many(text, provider)
