"""A WebSocket client that costs a load generator little.

Load runs share the machine's cores with the server they measure: a client that
spends as much CPU per message as the server (the ``websockets`` library's does,
with its tasks, queues and per-frame masking) halves what the server can be
shown to carry. This one is an ``asyncio.Protocol`` that writes frames whole
and reads them without copies beyond the one out of the receive buffer.

Its frames are masked with a zero key (RFC 6455 5.3: the client must mask, any
key is valid; a zero key leaves the payload as it is), so a message encoded
once can be sent by every session. It answers pings, and knows text and close
frames; nothing else a load run needs.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
ZERO_MASK = b"\0\0\0\0"


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One final, masked client frame around ``payload``."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + ZERO_MASK + payload


class LeanWebSocket(asyncio.Protocol):
    """One connection. Messages go to ``on_message`` when it is set, else to
    ``messages`` (for the few a run awaits, such as a session's first reply)."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.on_message: Callable[[bytes], None] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._upgraded = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, url: str) -> LeanWebSocket:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        host = parts.hostname or "localhost"
        _, client = await loop.create_connection(cls, host, parts.port or 80)
        key = base64.b64encode(os.urandom(16)).decode()
        client._write(
            (
                f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await client._upgraded
        return client

    def send(self, message: bytes) -> None:
        """A text message, framed here."""
        self._write(frame(message))

    def send_frame(self, data: bytes) -> None:
        """A frame made by ``frame`` beforehand."""
        self._write(data)

    async def recv(self) -> bytes:
        return await self.messages.get()

    async def close(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._write(frame(struct.pack("!H", 1000), CLOSE))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 2.0)
        except TimeoutError:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._upgraded.done():
            self._upgraded.set_exception(exc or ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status:
                self._upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self._upgraded.set_result(None)
        self._read_frames()

    def _read_frames(self) -> None:
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            size, offset = second & 0x7F, start + 2
            if size == 126:
                if len(buffer) - offset < 2:
                    break
                (size,) = struct.unpack_from("!H", buffer, offset)
                offset += 2
            elif size == 127:
                if len(buffer) - offset < 8:
                    break
                (size,) = struct.unpack_from("!Q", buffer, offset)
                offset += 8
            if len(buffer) - offset < size:
                break
            payload = bytes(buffer[offset : offset + size])  # servers do not mask
            start = offset + size
            self._on_frame(first & 0x0F, payload)
        del buffer[:start]

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == TEXT:
            if self.on_message is not None:
                self.on_message(payload)
            else:
                self.messages.put_nowait(payload)
        elif opcode == PING:
            self._write(frame(payload, PONG))
        elif opcode == CLOSE:
            self._write(frame(payload[:2], CLOSE))
            if self._transport is not None:
                self._transport.close()
