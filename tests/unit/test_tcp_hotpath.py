"""The TCP relay's hot path (issue 7): the server connection's protocol hands its reads
to the session without a forwarding frame."""

from __future__ import annotations

import asyncio

from pylb.proxy.tcp import _ServerSide


class _Session:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def _server_data(self, data: bytes) -> None:
        self.got.append(data)

    def _server_eof(self) -> bool:
        return True


def test_server_side_data_received_is_the_sessions_handler() -> None:
    session = _Session()
    side = _ServerSide(session)  # type: ignore[arg-type]
    # What the event loop calls is the session's own bound method (uvloop caches it when
    # the transport is made), not a method of the protocol that calls it in turn.
    assert side.data_received == session._server_data
    side.data_received(b"abc")
    assert session.got == [b"abc"]
    assert isinstance(side, asyncio.Protocol)
    assert side.eof_received() is True
