"""A uvicorn server that ends sessions properly before it closes their sockets."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from sonicgate.sessions.manager import SessionManager

FLUSH_SECONDS = 0.2  # for the connections' writers to send the last messages


class GracefulServer(uvicorn.Server):
    """On SIGTERM or SIGINT, uvicorn closes every WebSocket before the app's own
    shutdown runs; this ends the sessions first: COMPLETED, the client told."""

    def __init__(self, config: uvicorn.Config, manager: SessionManager) -> None:
        super().__init__(config)
        self.manager = manager

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.manager.shutdown()
        await asyncio.sleep(FLUSH_SECONDS)
        await super().shutdown(sockets)
