"""`Exchange._on_events` writes what one server read produced with one call: small
outputs joined into one bytes object (one send(2) of one buffer), large ones with
writelines (no body copied). Measured in docs/performance.md."""

from __future__ import annotations

from pylb.proxy.exchange import JOIN_MAX, _flush


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, parts) -> None:
        self.calls.append(("writelines", list(parts)))


def test_small_pieces_are_joined_into_one_write() -> None:
    t = _Recorder()
    out = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"]
    _flush(t, out, sum(map(len, out)))  # type: ignore[arg-type]
    assert t.calls == [("write", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
    assert out == []


def test_one_piece_is_written_as_it_is() -> None:
    t = _Recorder()
    body = b"x" * (JOIN_MAX * 4)
    _flush(t, [body], len(body))  # type: ignore[arg-type]
    assert t.calls[0][1] is body


def test_large_output_is_not_copied() -> None:
    t = _Recorder()
    body = b"x" * (JOIN_MAX + 1)
    out = [b"head", body]
    _flush(t, out, 4 + len(body))  # type: ignore[arg-type]
    kind, parts = t.calls[0]
    assert kind == "writelines"
    assert parts[1] is body  # type: ignore[index]


def test_nothing_to_write_writes_nothing() -> None:
    t = _Recorder()
    _flush(t, [], 0)  # type: ignore[arg-type]
    assert t.calls == []
