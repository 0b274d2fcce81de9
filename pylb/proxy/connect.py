"""Opening an upstream connection with a hard deadline, on asyncio and uvloop alike.

Why not `asyncio.wait_for(loop.create_connection(host, port))`: cancelling uvloop's
`create_connection` at the wrong moment has been reported to close an fd twice
(MagicStack/uvloop #645, #738), and under load that fd number may already belong to
another connection. So the connect itself is done here on a non-blocking socket we own:

1. resolve once (IP literals need no lookup; names go through `loop.getaddrinfo`);
2. `socket.connect()` -> EINPROGRESS, wait for writability with `add_writer` and ONE
   `call_later` deadline; no task is cancelled, so no library code is interrupted;
3. on any failure remove the writer *before* closing the socket we own;
4. only a connected socket is handed to `loop.create_connection(factory, sock=sock)`,
   which then completes at once. (uvloop >= 0.20 detaches the socket object when that
   step fails, asyncio closes it via the transport: closing it again is a no-op.)

Errors come out as one exception type, `ConnectError`, with a `kind` the caller's retry
and health logic can switch on and an `info` text in HAProxy's words for logs and stats.
Nothing is logged here: the caller decides (it is on the data path).
"""

from __future__ import annotations

import asyncio
import errno as _errno
import os
import socket
from collections.abc import Callable
from typing import Literal, TypeVar

from pylb.config.model import Address

P = TypeVar("P", bound=asyncio.BaseProtocol)

ConnectKind = Literal["timeout", "refused", "unreachable", "reset", "error"]

_KIND_BY_ERRNO: dict[int, ConnectKind] = {
    _errno.ECONNREFUSED: "refused",
    _errno.ETIMEDOUT: "timeout",
    _errno.ENETUNREACH: "unreachable",
    _errno.EHOSTUNREACH: "unreachable",
    _errno.EHOSTDOWN: "unreachable",
    _errno.ENETDOWN: "unreachable",
    _errno.ECONNRESET: "reset",
    _errno.ECONNABORTED: "reset",
    _errno.EPIPE: "reset",
}


class ConnectError(Exception):
    """A connect to a server failed.

    `kind`: 'timeout' | 'refused' | 'unreachable' | 'reset' | 'error' (what retry and
    passive health checks switch on); `errno`: the OS error number or None (resolution
    failure); `info`: short human text as HAProxy prints it ("Connection refused").
    """

    __slots__ = ("errno", "info", "kind")

    def __init__(self, kind: ConnectKind, err: int | None, info: str) -> None:
        super().__init__(info)
        self.kind: ConnectKind = kind
        self.errno = err
        self.info = info

    @classmethod
    def from_errno(cls, err: int) -> ConnectError:
        return cls(_KIND_BY_ERRNO.get(err, "error"), err, os.strerror(err))

    @classmethod
    def timeout(cls) -> ConnectError:
        return cls("timeout", _errno.ETIMEDOUT, "Connection timed out")

    def __repr__(self) -> str:
        return f"ConnectError({self.kind!r}, {self.errno!r}, {self.info!r})"


_Family = int
_SockAddr = tuple


def _literal_target(address: Address) -> tuple[_Family, _SockAddr] | None:
    """(family, sockaddr) for an IP literal, None for a host name (needs a lookup)."""
    host = address.host
    if ":" in host:
        # IPv6 literal (possibly with a %scope): let connect() parse the string itself.
        return socket.AF_INET6, (host, address.port, 0, 0)
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return None
    return socket.AF_INET, (host, address.port)


async def _resolve(
    loop: asyncio.AbstractEventLoop, address: Address, timeout: float
) -> list[tuple[_Family, _SockAddr]]:
    literal = _literal_target(address)
    if literal is not None:
        return [literal]
    # A name costs one lookup per connect (no cache yet): fine for config-time names of
    # servers; cancelling getaddrinfo only abandons a thread/libuv request, no fd is at stake.
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except TimeoutError:
        raise ConnectError.timeout() from None
    except socket.gaierror as e:
        raise ConnectError("error", None, f"Name resolution failed: {e.strerror}") from None
    except UnicodeError:  # the idna codec refuses the name (empty or overlong label)
        raise ConnectError("error", None, "Name resolution failed: invalid name") from None
    out: list[tuple[_Family, _SockAddr]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if (family, sockaddr) not in out:
            out.append((family, sockaddr))
    if not out:
        raise ConnectError("error", None, "Name resolution failed: no address")
    return out


async def _sock_connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, sockaddr: _SockAddr, timeout: float
) -> None:
    """Connect a non-blocking socket within `timeout`. Raises ConnectError. Never cancels a
    task; always leaves no reader/writer registered for the fd, so the caller may close it."""
    try:
        sock.connect(sockaddr)
        return
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as e:
        raise ConnectError.from_errno(e.errno or _errno.EIO) from None
    if timeout <= 0:
        raise ConnectError.timeout()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def on_writable() -> None:
        if fut.done():
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            fut.set_exception(ConnectError.from_errno(err))
        else:
            fut.set_result(None)

    def on_deadline() -> None:
        if not fut.done():
            fut.set_exception(ConnectError.timeout())

    loop.add_writer(fd, on_writable)
    deadline = loop.call_later(timeout, on_deadline)
    try:
        await fut
    finally:
        deadline.cancel()
        loop.remove_writer(fd)


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    address: Address,
    protocol_factory: Callable[[], P],
    timeout: float,
) -> tuple[asyncio.Transport, P]:
    """Connect to `address` (IPv4/IPv6 literal or host name) within `timeout` seconds
    (resolution included) and attach `protocol_factory()` to the connection.

    TCP_NODELAY is set: the proxy forwards what it has at once; Nagle would only add
    latency to small request/response exchanges. Raises `ConnectError`; on any outcome,
    including cancellation of the calling task, no socket is left open.
    """
    deadline = loop.time() + timeout
    targets = await _resolve(loop, address, timeout)
    last: ConnectError | None = None
    for family, sockaddr in targets:
        remaining = deadline - loop.time()
        if remaining <= 0:
            last = ConnectError.timeout()
            break
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except OSError as e:
            raise ConnectError.from_errno(e.errno or _errno.EIO) from None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await _sock_connect(loop, sock, sockaddr, remaining)
        except ConnectError as e:
            sock.close()
            last = e
            continue  # next address of a name, if any
        except BaseException:
            sock.close()
            raise
        try:
            transport, protocol = await loop.create_connection(protocol_factory, sock=sock)
        except OSError as e:
            sock.close()  # no-op if the loop already closed/detached it
            raise ConnectError.from_errno(e.errno or _errno.EIO) from None
        except BaseException:
            sock.close()
            raise
        return transport, protocol  # type: ignore[return-value]  # loop typeshed is loose
    assert last is not None
    raise last
