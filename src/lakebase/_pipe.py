"""Forwarding bytes between two asyncio transports, with flow control: shared by ``lakebase proxy`` and
the emulator's TLS proxy once their logins are done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Pipe(asyncio.Protocol):
    """Forwards what one transport receives to ``peer``; pauses reading the peer while our own transport's
    buffer is full; closes the peer and calls ``on_lost`` when our transport is lost."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.peer: asyncio.Transport | None = None
        self._on_lost = on_lost
        self.lost = False  # our transport is closed (for the client's: what was queued went out first)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)

    def eof_received(self) -> bool | None:
        if self.peer is not None and not self.peer.is_closing() and self.peer.can_write_eof():
            self.peer.write_eof()
        return False

    def pause_writing(self) -> None:  # our transport's buffer is full: stop reading the peer
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.peer is not None:
            self.peer.close()
        self._on_lost()
