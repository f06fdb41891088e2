"""A uvicorn server that ends sessions properly before it closes their sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette

from sonicgate.config import Settings
from sonicgate.sessions.manager import SessionManager

FLUSH_SECONDS = 0.2  # for the connections' writers to send the last messages


class GracefulServer(uvicorn.Server):
    """On SIGTERM or SIGINT, uvicorn closes every WebSocket before the app's own
    shutdown runs; this ends the sessions first: COMPLETED, the client told."""

    def __init__(
        self,
        config: uvicorn.Config,
        manager: SessionManager,
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        """``on_ready``: called once the server listens (a worker tells its supervisor)."""
        super().__init__(config)
        self.manager = manager
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.manager.shutdown()
        await asyncio.sleep(FLUSH_SECONDS)
        await super().shutdown(sockets)


def server_config(app: Starlette, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's settings for the gateway, from ours."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # uvicorn's records go through our handler and format too
        "ws_max_size": settings.ws_max_size,
        # Proxy headers are believed from the configured proxies only (uvicorn would
        # believe any process on this machine).
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        # Base64 audio hardly compresses: deflate per message would only cost CPU.
        "ws_per_message_deflate": False,
    }
    return uvicorn.Config(app, **(options | overrides))
