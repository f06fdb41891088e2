"""What the HTTP emulators share: their app served by uvicorn on a local port."""

from __future__ import annotations

import asyncio
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette


class Served:
    """``async with`` serves ``app()`` on 127.0.0.1:``port`` (both the subclass's)."""

    port: int

    def app(self) -> Starlette:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        config = uvicorn.Config(self.app(), port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[Any] = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # it failed to start: say why
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await self._task
