"""Back-pressure between the two transports of one proxied connection.

When the transport we write to crosses its high-water mark, asyncio calls its protocol's
`pause_writing()`; we then pause *reading* on the opposite transport, so a fast sender
cannot fill our memory faster than a slow receiver drains it. Flags make the calls
idempotent, because pause/resume may arrive from both directions and from close paths.
"""

from __future__ import annotations

import asyncio

# 64 KiB, as uvicorn: large enough for a syscall's worth per write, small enough that
# 10 000 connections stay within a few hundred MB in the worst case.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


class FlowControl:
    """Pauses reading on `source` while the opposite side cannot take more."""

    __slots__ = ("reading_paused", "source")

    def __init__(self, source: asyncio.Transport | None) -> None:
        self.source = source
        # A plain attribute, not a property: read on the hot path (read-only for callers).
        self.reading_paused = False

    def pause_reading(self) -> None:
        if not self.reading_paused and self.source is not None:
            self.reading_paused = True
            if not self.source.is_closing():
                self.source.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.source is not None:
            self.reading_paused = False
            if not self.source.is_closing():
                self.source.resume_reading()


def set_water_marks(transport: asyncio.WriteTransport) -> None:
    transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
