"""The Starlette application: routes, and the services they share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from sonicgate import __version__
from sonicgate.bus import open_bus
from sonicgate.bus.base import Filter
from sonicgate.config import Settings
from sonicgate.engines.base import Engine
from sonicgate.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sonicgate.metrics import GatewayMetrics
from sonicgate.protocol.base import to_json
from sonicgate.protocol.realtime import RealtimeDialect
from sonicgate.server.access import AccessMiddleware, AccessPolicy, principal_of
from sonicgate.server.ratelimit import Counters, RateLimiter
from sonicgate.server.stream import ClientConnection, ConnectionLimits
from sonicgate.server.twilio import TwilioRoutes
from sonicgate.sessions.manager import Limits, SessionManager
from sonicgate.sessions.session import Services
from sonicgate.sessions.slots import open_slots
from sonicgate.shared_redis import connect
from sonicgate.store import make_audio_store, make_store
from sonicgate.store.base import StoreUnavailable
from sonicgate.store.registry import node_of, open_registry
from sonicgate.web import STATIC_DIR


def create_app(settings: Settings, engines: Mapping[str, Engine]) -> Starlette:
    """Raises ``ValueError`` for unusable access settings (see ``AccessPolicy``), an
    unknown audio store or bus URL (see ``check_bus_url``)."""
    policy = AccessPolicy.from_settings(settings)
    gateway = Gateway(settings, engines)
    twilio = TwilioRoutes(settings, policy, gateway.manager, gateway.connection_limits)
    app = Starlette(
        routes=[
            *gateway.routes(),
            *twilio.routes(),
            Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web"),
        ],
        # Around every route: a refused client reaches none, and no session is created.
        middleware=[
            Middleware(
                AccessMiddleware,
                policy=policy,
                max_connections=settings.max_connections,
                self_checked=twilio.self_checked,
                counters=gateway.counters,
            )
        ],
        lifespan=gateway.lifespan,
    )
    app.state.manager = gateway.manager
    return app


def session_limits(settings: Settings) -> Limits:
    return Limits(
        reorder_window=settings.reorder_window,
        stale_after_seconds=settings.stale_after_seconds,
        audio_retention_days=settings.audio_retention_days,
        max_sessions_per_client=settings.max_sessions_per_client,
        max_turn_audio_seconds=settings.max_turn_audio_seconds,
    )


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        max_message_bytes=settings.max_message_bytes,
        max_session_seconds=settings.max_session_seconds,
        idle_timeout=settings.idle_timeout_seconds,
        outbox_messages=settings.outbox_messages,
        outbox_bytes=settings.outbox_bytes,
    )


class Gateway:
    """The services the routes share, and the gateway's own routes."""

    def __init__(self, settings: Settings, engines: Mapping[str, Engine]) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.engines = engines
        limits = session_limits(settings)
        self.store = make_store(settings)
        # A node's connections outlive it as long as its sessions are taken to.
        self.registry = open_registry(settings, self.store, ttl_seconds=limits.node_silence_seconds)
        self.metrics = GatewayMetrics()
        self.services = Services(
            store=self.store,
            registry=self.registry,
            bus=open_bus(settings.bus, settings.bus_prefix),
            audio=make_audio_store(settings),
            metrics=self.metrics,
        )
        # Limits count in the Redis the nodes share, if they do, so they hold across them.
        self.shared = None if settings.bus == "memory" else connect(settings.bus)
        self.counters = Counters(self.shared, f"{settings.bus_prefix}:limits")
        slots = open_slots(
            limits.max_sessions_per_client,
            self.shared,
            settings.bus_prefix,
            limits.node_silence_seconds,
        )
        self.manager = SessionManager(
            engines, settings.engine, self.services, limits, settings.node_id, slots
        )
        self.messages = RateLimiter(settings.max_messages_per_second, "messages", self.counters)
        self.connection_limits = connection_limits(settings)
        self.started = time.monotonic()

    def routes(self) -> list[BaseRoute]:
        return [
            WebSocketRoute("/api/nova-sonic/stream", self.stream),
            WebSocketRoute("/api/events", self.events),
            WebSocketRoute("/v1/realtime", self.realtime),
            Route("/api/nova-sonic/status", self.status),
            Route("/api/nova-sonic/cleanup", self.cleanup, methods=["GET", "POST"]),
            Route("/metrics", self.prometheus),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.store.open()
        await self.manager.recover()
        keep_alive = asyncio.create_task(self.manager.keep_alive(), name="keep-alive")
        try:
            yield
        finally:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive
            await self.manager.close_all()
            await self.services.bus.aclose()  # after close_all, whose session events it carries
            await self.registry.aclose()
            if self.shared is not None:
                await self.shared.aclose()
            for engine in self.engines.values():
                await engine.aclose()
            await self.store.close()

    def connection(self, websocket: WebSocket, **preset: Any) -> ClientConnection:
        return ClientConnection(
            websocket, self.manager, self.connection_limits, self.messages, **preset
        )

    async def stream(self, websocket: WebSocket) -> None:
        await self.connection(websocket).run()

    async def realtime(self, websocket: WebSocket) -> None:
        """OpenAI's Realtime API: the session opens with the socket. A ``model`` that
        names one of our engines picks it; any other runs on the default engine."""
        model = websocket.query_params.get("model") or self.settings.engine
        beta = websocket.headers.get("openai-beta", "").startswith("realtime")
        dialect = RealtimeDialect(model, beta=beta)
        opening = dialect.opening(model if model in self.engines else None)
        await self.connection(websocket, dialect=dialect, opening=opening).run()

    async def events(self, websocket: WebSocket) -> None:
        await websocket.accept()
        params = websocket.query_params
        principal = principal_of(websocket.scope)
        # With access control on, an ordinary user sees its own sessions' events only.
        mine = principal.id if principal.authenticated and not principal.operator else None
        wanted = Filter(params.get("sessionId"), params.get("userId"), owner=mine)
        subscription = self.services.bus.subscribe(wanted)

        async def forward() -> None:
            async for event in subscription:
                await websocket.send_text(to_json(event.to_json()))

        forwarder = asyncio.create_task(forward())
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # subscribers only listen; anything they send is ignored
        except WebSocketDisconnect:
            pass
        finally:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forwarder
            await subscription.aclose()

    async def status(self, request: Request) -> JSONResponse:
        # A shared store or registry that is down does not stop the answer.
        by_node: dict[str, int] | None = None  # every node's connections
        with contextlib.suppress(StoreUnavailable):
            connections = await self.registry.connections()
            by_node = dict(Counter(node_of(c.connectionId) for c in connections))
        store_up = False
        with contextlib.suppress(StoreUnavailable):
            await self.store.get_session("")  # any answer will do
            store_up = True
        return JSONResponse(
            {
                "status": "ok" if store_up and by_node is not None else "degraded",
                "store": "ok" if store_up else "unavailable",
                "registry": "ok" if by_node is not None else "unavailable",
                "service": "sonicgate",
                "version": __version__,
                "uptimeSeconds": round(time.monotonic() - self.started, 3),
                "defaultEngine": self.settings.engine,
                "engines": self.engine_summaries(),
                "node": self.settings.node_id,
                "activeSessions": len(self.manager.live),  # on this node
                "activeConnections": None if by_node is None else sum(by_node.values()),
                "connectionsByNode": by_node,
            }
        )

    def engine_summaries(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "languages": list(caps.languages),
                "models": list(caps.models),
                "voices": list(caps.voices),
                "outputSampleRate": caps.output_sample_rate,
            }
            for name, engine in self.engines.items()
            if (caps := engine.capabilities())
        }

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def cleanup(self, request: Request) -> JSONResponse:
        body = await self.manager.cleanup(principal_of(request.scope))
        return JSONResponse({"status": "ok", **body})
