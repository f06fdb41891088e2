"""The load runs' client (``bench.lean_ws``) against a real server: what it sends
arrives, what comes back is read, and nothing is lost, so that the capacity figures
measure the gateway and not a broken client."""

from __future__ import annotations

from bench.echo_load import echo_load
from sonicgate.engines.echo import EchoEngine
from tests.conftest import ServerFactory


async def test_echo_load_sees_every_chunk_come_back_in_order(make_uvicorn: ServerFactory) -> None:
    server = await make_uvicorn({"echo": EchoEngine()}, max_sessions_per_client=0)
    stats = await echo_load(server.ws(), sessions=3, seconds=1.0, chunk_samples=512)
    assert stats.sent == 3 * 31 and stats.received == stats.sent
    assert stats.lost == 0 and stats.reordered == 0
    assert len(stats.round_trip_ms) == stats.sent
