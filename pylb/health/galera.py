"""Galera-aware checks: native wsrep state over the MySQL protocol, the MySQL handshake, and
Percona's `clustercheck` HTTP convention.

Why a native check: an open port says nothing about whether a Galera node may take writes. A
node that is Joining, Donor/Desynced, in a non-Primary component, or `read_only` accepts TCP
(and often logins) but must not be the writer. The criteria are those of the Galera-aware
proxies (ProxySQL, MaxScale galeramon, Percona clustercheck): wsrep_ready=ON,
wsrep_connected=ON, wsrep_cluster_status=Primary, wsrep_local_state=4 (Synced) or 2
(Donor/Desynced) when allowed, wsrep_desync=OFF, wsrep_reject_queries=NONE, read_only=OFF
unless allowed.

The MySQL protocol is not ours to write: PyMySQL (pure Python, blocking) runs in a small
bounded thread pool. Each check carries ONE deadline covering queueing, TCP connect, greeting,
login and queries: a SIGSTOPped node completes the TCP handshake in the kernel and then never
answers (FACTS.md), so per-call socket timeouts alone could add up to several times the check
timeout. When the deadline passes, the event loop shuts the check's socket down, which wakes
the blocked thread at once, so a frozen node cannot pin the pool's threads.

The decision (`judge`) is a pure function of the parsed node state, tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pymysql
from pymysql.protocol import MysqlPacket

from pylb.config.model import Address, Health
from pylb.health.probes import Probe, http_probe, register_probe
from pylb.health.types import CheckResult, CheckStatus
from pylb.proxy.connect import ConnectError, open_connection

# Percona's clustercheck answers 200 when the node is usable, 503 otherwise.
CLUSTERCHECK_PORT = 9200

# Galera's numeric wsrep_local_state values and their wsrep_local_state_comment words.
LOCAL_STATES: Mapping[int, str] = {
    1: "Joining",
    2: "Donor/Desynced",
    3: "Joined",
    4: "Synced",
}
SYNCED = 4
DONOR = 2

_STATUS_NAMES = (
    "wsrep_ready",
    "wsrep_connected",
    "wsrep_cluster_status",
    "wsrep_local_state",
    "wsrep_local_state_comment",
    "wsrep_local_index",
    "wsrep_cluster_state_uuid",
    "wsrep_last_committed",
    "wsrep_cluster_size",
)
_VARIABLE_NAMES = (
    "read_only",
    "wsrep_desync",
    "wsrep_reject_queries",
    "wsrep_node_name",
    "wsrep_on",
)

# SHOW statements, not SELECTs: a node that is not wsrep_ready rejects most queries with
# "WSREP has not yet prepared node for application use", but always answers SHOW, and a
# non-ready node is exactly the case the check must describe, not fail on.
_SHOW_STATUS = "SHOW GLOBAL STATUS WHERE Variable_name IN ({})".format(
    ", ".join(f"'{n}'" for n in _STATUS_NAMES)
)
_SHOW_VARIABLES = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({})".format(
    ", ".join(f"'{n}'" for n in _VARIABLE_NAMES)
)

_UINT = re.compile(r"[0-9]{1,20}")
_SINT = re.compile(r"-?[0-9]{1,20}")

# A handful of threads is plenty: checks of a few Galera nodes every 250 ms or more, and
# each thread is released at its check's deadline at the latest.
_EXECUTOR_WORKERS = 8
_executor: ThreadPoolExecutor | None = None
# Said when the check never got a thread: the node was not even tried (our own congestion,
# typically several frozen nodes at once), which an operator must be able to tell apart.
_QUEUED_INFO = "no check thread free before the deadline"
_executor_lock = threading.Lock()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=_EXECUTOR_WORKERS, thread_name_prefix="pylb-mysql-check"
            )
        return _executor


def shutdown_executor() -> None:
    """Stop the check threads (worker exit, tests); a later check starts a new pool."""
    global _executor
    with _executor_lock:
        ex, _executor = _executor, None
    if ex is not None:
        ex.shutdown(wait=False, cancel_futures=True)


class SecretError(Exception):
    """A password file that cannot be used; the message names the file and the reason."""


def read_secret(path: str | Path) -> str:
    """The content of a password file, minus one trailing newline (what `echo pw > file`
    adds). Other whitespace is kept: it may be part of the password."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SecretError(f"password_file {p}: no such file") from None
    except IsADirectoryError:
        raise SecretError(f"password_file {p}: is a directory") from None
    except PermissionError:
        raise SecretError(f"password_file {p}: permission denied") from None
    except OSError as e:
        raise SecretError(f"password_file {p}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"password_file {p}: not valid UTF-8") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


# -- node state and the pure decision -----------------------------------------------------


def _parse_uint(v: str | None) -> int | None:
    return int(v) if v is not None and _UINT.fullmatch(v) else None


def _parse_sint(v: str | None) -> int | None:
    return int(v) if v is not None and _SINT.fullmatch(v) else None


def _on(v: str | None) -> bool:
    return v is not None and v.upper() in ("ON", "1", "TRUE", "YES")


@dataclass(frozen=True, slots=True)
class GaleraNode:
    """What one node says about itself. Identity fields (name, state uuid, last committed,
    local index) let proxy nodes that see the same cluster make the same writer choice."""

    node_name: str = ""
    cluster_state_uuid: str = ""
    last_committed: int | None = None
    local_index: int | None = None
    local_state: int | None = None
    local_state_comment: str = ""
    cluster_status: str = ""
    cluster_size: int | None = None
    ready: bool = False
    connected: bool = False
    read_only: bool = False
    desync: bool = False
    reject_queries: str = "NONE"
    wsrep_on: bool = True

    @classmethod
    def from_rows(cls, status: Mapping[str, str], variables: Mapping[str, str]) -> GaleraNode:
        """Build from SHOW GLOBAL STATUS / VARIABLES rows (names compared lower-case)."""
        s = {k.lower(): v for k, v in status.items()}
        v = {k.lower(): val for k, val in variables.items()}
        return cls(
            node_name=v.get("wsrep_node_name", ""),
            cluster_state_uuid=s.get("wsrep_cluster_state_uuid", ""),
            last_committed=_parse_sint(s.get("wsrep_last_committed")),
            local_index=_parse_uint(s.get("wsrep_local_index")),
            local_state=_parse_uint(s.get("wsrep_local_state")),
            local_state_comment=s.get("wsrep_local_state_comment", ""),
            cluster_status=s.get("wsrep_cluster_status", ""),
            cluster_size=_parse_uint(s.get("wsrep_cluster_size")),
            ready=_on(s.get("wsrep_ready")),
            connected=_on(s.get("wsrep_connected")),
            read_only=_on(v.get("read_only")),
            desync=_on(v.get("wsrep_desync")),
            reject_queries=(v.get("wsrep_reject_queries") or "NONE").upper(),
            wsrep_on=_on(v.get("wsrep_on", "ON")),
        )

    def state_text(self) -> str:
        """`wsrep_local_state=2 Donor/Desynced` (Galera's own comment when it gave one)."""
        if self.local_state is None:
            return "wsrep_local_state=?"
        words = self.local_state_comment or LOCAL_STATES.get(self.local_state, "unknown")
        return f"wsrep_local_state={self.local_state} {words}"


def judge(
    node: GaleraNode, *, available_when_donor: bool = False, available_when_readonly: bool = False
) -> tuple[CheckStatus, str]:
    """The verdict on one node and the reason an operator reads.

    L7OK: usable writer. L7OKC: usable only because an `available_when_*` option allows it.
    L7STS: answered, but must not take traffic. The first failing criterion is reported,
    in the order an operator would fix them (membership before state before settings).

    A node desynced on purpose (`wsrep_desync=ON`, e.g. for a backup) or told to reject
    queries is out even with `available_when_donor`: that option is for a node serving an
    SST (Percona clustercheck's meaning), not for one an operator took out.
    """
    if not node.wsrep_on:
        return CheckStatus.L7STS, "wsrep_on=OFF (not a Galera node)"
    if not node.connected:
        return CheckStatus.L7STS, "wsrep_connected=OFF"
    if node.cluster_status != "Primary":
        return CheckStatus.L7STS, f"wsrep_cluster_status={node.cluster_status or '?'}"
    if not node.ready:
        return CheckStatus.L7STS, "wsrep_ready=OFF"
    conditional: list[str] = []
    if node.local_state == DONOR:
        if not available_when_donor:
            return CheckStatus.L7STS, node.state_text()
        if node.desync:
            return CheckStatus.L7STS, f"wsrep_desync=ON ({node.state_text()})"
        conditional.append(f"{node.state_text()} (available_when_donor)")
    elif node.local_state != SYNCED:
        return CheckStatus.L7STS, node.state_text()
    if node.desync:
        return CheckStatus.L7STS, "wsrep_desync=ON"
    if node.reject_queries != "NONE":
        return CheckStatus.L7STS, f"wsrep_reject_queries={node.reject_queries}"
    if node.read_only:
        if not available_when_readonly:
            return CheckStatus.L7STS, "read_only=ON"
        conditional.append("read_only=ON (available_when_readonly)")
    if conditional:
        return CheckStatus.L7OKC, "; ".join(conditional)
    return CheckStatus.L7OK, node.state_text()


@dataclass(frozen=True, slots=True)
class GaleraCheckResult(CheckResult):
    """A CheckResult (the scheduler needs nothing more) that also carries the node's own
    state when the node answered, for the writer choice and for `show servers`."""

    node: GaleraNode | None = None


# -- the blocking part, run in a thread ---------------------------------------------------


class _Attempt:
    """Shared between the event loop and the check thread: the socket (so the loop can
    abort it at the deadline) and the phase reached (to classify a timeout as L4 or L7)."""

    __slots__ = ("abandoned", "budget", "connected", "lock", "sock", "started", "started_at")

    def __init__(self, budget: float) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.budget = budget  # the check's timeout
        self.started_at = 0.0  # time.monotonic() when a thread picked the check up
        self.started = False  # a thread picked the check up (else it waited in the queue)
        self.connected = False
        self.abandoned = False

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.started = True

    def queued_past_half(self, deadline: float) -> bool:
        """A connect not done by `deadline` is blamed on whoever used most of the budget:
        a check that waited in the queue for more than half of it (a thread freed at
        another check's deadline picks it up with almost nothing left) was not fairly
        tried, and saying "L4 timeout" would blame the node for our own congestion."""
        return not self.started or deadline - self.started_at < self.budget / 2

    def adopt(self, sock: socket.socket) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.sock = sock
            self.connected = True
            return True

    def abandon(self) -> None:
        """Called by the loop at the deadline: wake the thread blocked on the socket."""
        with self.lock:
            self.abandoned = True
            sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _os_info(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _timed_out(e: BaseException) -> bool:
    """Whether a socket timeout caused `e`. PyMySQL wraps it in OperationalError 2013 ("Lost
    connection ... (timed out)") raised inside the except block, so it is the context."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, TimeoutError):
            return True
        seen.add(id(cur))
        nxt = getattr(cur, "original_exception", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return False


def _mysql_error(e: pymysql.err.MySQLError) -> tuple[CheckStatus, str]:
    """Map a PyMySQL error after the TCP connect to a status and a short info."""
    if _timed_out(e):
        return CheckStatus.L7TOUT, ""
    orig = getattr(e, "original_exception", None)
    if isinstance(orig, OSError):
        return CheckStatus.SOCKERR, _os_info(orig)
    args = e.args
    code = args[0] if args and isinstance(args[0], int) else None
    msg = str(args[1]) if len(args) > 1 else str(e)
    if code is not None and code >= 2000:
        # Client-side errors (2013 lost connection, 2006 gone away): the socket died.
        return CheckStatus.SOCKERR, msg
    # A server error packet (1045 access denied, 1040 too many connections, 1129 blocked,
    # 1047 WSREP not ready): the node answered and said no.
    return CheckStatus.L7STS, f"{code} {msg}" if code is not None else msg


def _query_node(
    attempt: _Attempt,
    address: Address,
    user: str,
    password: str,
    deadline: float,
) -> tuple[CheckStatus, str, GaleraNode | None]:
    """Connect, log in, read the wsrep state; runs in a check thread. `deadline` is
    time.monotonic() based."""
    remaining = deadline - time.monotonic()
    if remaining <= 0 or attempt.abandoned:
        return CheckStatus.L4TOUT, _QUEUED_INFO, None  # the loop has answered already
    attempt.start()
    try:
        sock = socket.create_connection((address.host, address.port), timeout=remaining)
    except TimeoutError:
        return CheckStatus.L4TOUT, _QUEUED_INFO if attempt.queued_past_half(deadline) else "", None
    except OSError as e:
        return CheckStatus.L4CON, _os_info(e), None
    if not attempt.adopt(sock):
        sock.close()
        return CheckStatus.L4TOUT, "", None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    remaining = max(0.001, deadline - time.monotonic())
    conn = pymysql.connections.Connection(
        host=address.host,
        port=address.port,
        user=user,
        password=password,
        connect_timeout=remaining,
        read_timeout=remaining,
        write_timeout=remaining,
        autocommit=None,  # leave the session as the server made it: no extra round trip
        # PyMySQL >= 1.1.2 otherwise builds a default SSL context (loading the system CA
        # store: ~45 ms of CPU) on EVERY connection to try TLS opportunistically. The check
        # sends no secret data but the login, which mysql_native_password never sends in
        # clear; HAProxy's mysql-check is plaintext too.
        ssl_disabled=True,
        defer_connect=True,
    )
    try:
        conn.connect(sock)  # greeting + login; sock is now owned by conn
        with conn.cursor() as cur:
            cur.execute(_SHOW_STATUS)
            status = {str(k): str(v) for k, v in cur.fetchall()}
            cur.execute(_SHOW_VARIABLES)
            variables = {str(k): str(v) for k, v in cur.fetchall()}
    except pymysql.err.MySQLError as e:
        if attempt.abandoned:
            return CheckStatus.L7TOUT, "", None
        status_, info = _mysql_error(e)
        return status_, info, None
    except OSError as e:  # a socket error PyMySQL did not wrap
        if attempt.abandoned:
            return CheckStatus.L7TOUT, "", None
        return CheckStatus.SOCKERR, _os_info(e), None
    finally:
        # COM_QUIT when still possible: a server counts connections dropped without it as
        # aborted (and, for handshake errors, toward max_connect_errors).
        if conn.open:
            with contextlib.suppress(Exception):
                conn.close()
        else:
            sock.close()
    node = GaleraNode.from_rows(status, variables)
    return CheckStatus.L7OK, "", node


# -- the async probes ---------------------------------------------------------------------


async def check_galera(
    address: Address,
    *,
    user: str,
    password: str,
    timeout: float,
    available_when_donor: bool = False,
    available_when_readonly: bool = False,
) -> GaleraCheckResult:
    """Native Galera check of one node; never raises (except CancelledError), always
    returns within `timeout` (plus scheduling noise).

    Passed (L7OK / L7OKC) iff the node is usable as a writer per `judge`. The `info` is the
    reason ("wsrep_local_state=2 Donor/Desynced", "read_only=ON"); `node` carries the node's
    own state whenever it answered the queries.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = time.monotonic() + timeout
    attempt = _Attempt(timeout)
    fut = loop.run_in_executor(
        _get_executor(), _query_node, attempt, address, user, password, deadline
    )
    try:
        done, _ = await asyncio.wait({fut}, timeout=timeout)
    except asyncio.CancelledError:
        attempt.abandon()  # the checker stops: free the thread now, not at the deadline
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise
    if not done:
        connected, queued = attempt.connected, attempt.queued_past_half(deadline)
        attempt.abandon()
        # Let the thread's result (or error) be collected without a "never retrieved" warning.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        status = CheckStatus.L7TOUT if connected else CheckStatus.L4TOUT
        info = _QUEUED_INFO if queued and not connected else ""
        return GaleraCheckResult(status, status.passed, None, info, loop.time() - start)
    status, info, node = fut.result()
    duration = loop.time() - start
    if node is None:
        return GaleraCheckResult(status, status.passed, None, info, duration)
    status, info = judge(
        node,
        available_when_donor=available_when_donor,
        available_when_readonly=available_when_readonly,
    )
    return GaleraCheckResult(status, status.passed, None, info, duration, node)


# The timer's result for a greeting that did not come in time (identity-compared).
_TIMED_OUT = b"<timeout>"


class _GreetingProtocol(asyncio.Protocol):
    """Collects the server's first packet (4-byte header + payload); `done` gets the payload
    bytes, or None when the connection ended first."""

    __slots__ = ("_buf", "done")

    def __init__(self, done: asyncio.Future[bytes | None]) -> None:
        self.done = done
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self._buf += data
        if len(self._buf) >= 4:
            length = int.from_bytes(self._buf[:3], "little")
            if len(self._buf) >= 4 + length:
                self.done.set_result(bytes(self._buf[4 : 4 + length]))

    def eof_received(self) -> bool | None:
        if not self.done.done():
            self.done.set_result(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def judge_greeting(payload: bytes) -> tuple[CheckStatus, str]:
    """Classify the first packet a MySQL server sends: the v10 handshake (L6OK, info = the
    server version) or an error packet (too many connections, host blocked: L7STS)."""
    pkt = MysqlPacket(payload, "utf8")
    if not payload:
        return CheckStatus.L7RSP, "empty greeting"
    if pkt.is_error_packet():
        try:
            pkt.raise_for_error()
        except pymysql.err.MySQLError as e:
            code = e.args[0] if e.args else "?"
            msg = e.args[1] if len(e.args) > 1 else ""
            return CheckStatus.L7STS, f"{code} {msg}".strip()
        return CheckStatus.L7STS, "error packet"
    version = pkt.read_uint8()
    if version != 10:
        return CheckStatus.L7RSP, f"protocol version {version}, expected 10"
    end = payload.find(b"\0", 1)
    server = payload[1:end].decode("utf-8", "replace") if end > 0 else ""
    # MariaDB prefixes its version with "5.5.5-" for old clients; operators want the real one.
    return CheckStatus.L6OK, server.removeprefix("5.5.5-")


async def check_mysql_handshake(address: Address, timeout: float) -> CheckResult:
    """L6OK when the server sends a MySQL protocol-10 greeting within `timeout`, connect
    included. No login: nothing to configure, but it only proves mysqld's acceptor works.

    The connection is then dropped without a login, as HAProxy's user-less mysql-check
    does; MariaDB does not count that toward max_connect_errors (tested), but a `galera`
    check with a user is the better check anyway.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    done: asyncio.Future[bytes | None] = loop.create_future()
    try:
        transport, _ = await open_connection(
            loop, address, lambda: _GreetingProtocol(done), timeout
        )
    except ConnectError as e:
        status = CheckStatus.L4TOUT if e.kind == "timeout" else CheckStatus.L4CON
        return CheckResult.of(
            status, info="" if e.kind == "timeout" else e.info, duration=loop.time() - start
        )
    timer = loop.call_at(start + timeout, lambda: done.done() or done.set_result(_TIMED_OUT))
    try:
        payload = await done
    finally:
        timer.cancel()
        transport.abort()
    duration = loop.time() - start
    if payload is _TIMED_OUT:
        return CheckResult.of(CheckStatus.L6TOUT, duration=duration)
    if payload is None:
        return CheckResult.of(
            CheckStatus.SOCKERR, info="connection closed before the greeting", duration=duration
        )
    status, info = judge_greeting(payload)
    return CheckResult.of(status, info=info, duration=duration)


async def check_clustercheck(
    address: Address, timeout: float, *, path: str = "/", host: str | None = None
) -> CheckResult:
    """Percona clustercheck (an HTTP service, port 9200 by convention): 200 = usable,
    503 = not (its body says why). `address` is the check address, port included."""
    loop = asyncio.get_running_loop()
    return await http_probe(loop, address, timeout, path=path, host=host, expect=((200, 200),))


# -- registration with the scheduler's probe table ----------------------------------------


def galera_credentials(health: Health) -> tuple[str, str]:
    """(user, password) from the config; the password file is read here, once, so a bad
    file fails at start/reload rather than at every check."""
    if not health.user:
        raise SecretError("health.user is required for a galera check")
    if health.password_file:
        return health.user, read_secret(health.password_file)
    return health.user, health.password or ""


def _galera_factory(health: Health) -> Probe:
    user, password = galera_credentials(health)
    donor, readonly = health.available_when_donor, health.available_when_readonly

    async def probe(
        loop: asyncio.AbstractEventLoop, address: Address, timeout: float
    ) -> CheckResult:
        return await check_galera(
            address,
            user=user,
            password=password,
            timeout=timeout,
            available_when_donor=donor,
            available_when_readonly=readonly,
        )

    return probe


def _mysql_factory(health: Health) -> Probe:
    async def probe(
        loop: asyncio.AbstractEventLoop, address: Address, timeout: float
    ) -> CheckResult:
        return await check_mysql_handshake(address, timeout)

    return probe


register_probe("galera", _galera_factory)
register_probe("mysql", _mysql_factory)
# "clustercheck" is already an HTTP check in probes.py (with the config's path/expect).
