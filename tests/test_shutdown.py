"""A clean stop ends sessions properly; a crash's leftovers are marked at the next start."""

from __future__ import annotations

from pathlib import Path

from sonicgate.domain import SessionStatus, VoiceSession
from sonicgate.store.sqlite import SqliteStore
from tests.conftest import Connect, ServerFactory, stop_server
from tests.scripted_engine import ScriptedEngine
from tests.test_seed_typed import initialize


async def test_a_clean_stop_ends_every_session_and_tells_its_client(
    make_uvicorn: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_uvicorn({"scripted": scripted})  # stopped as on SIGTERM
    typed = await connect(server.ws())
    typed_id = (await initialize(typed))["sessionId"]
    assert isinstance(typed_id, str)
    action = await connect(server.ws())
    await action.send({"action": "voice_session_start", "userId": "u1", "data": {}})
    action_id = (await action.recv())["sessionId"]

    await stop_server(server)

    ended, _ = await typed.until("conversation_ended")
    assert ended["status"] == "COMPLETED"
    ended, _ = await action.until("voice_session_ended")
    assert ended["data"]["status"] == "COMPLETED"
    store = SqliteStore(server.settings.store_path)
    await store.open()
    try:
        for session_id in (typed_id, action_id):
            record = await store.get_session(session_id)
            assert record is not None and record.status is SessionStatus.COMPLETED
        assert await store.list_connections() == []
    finally:
        await store.close()


async def test_sessions_left_active_by_a_crash_are_marked_error_at_start(
    make_server: ServerFactory, scripted: ScriptedEngine, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "data" / "sonicgate.db")
    await store.open()
    await store.create_session(VoiceSession("crashed", "ns-crashed", "conn-here:gone", "u1"))
    await store.close()

    server = await make_server({"scripted": scripted}, node_id="here")
    store = SqliteStore(server.settings.store_path)
    await store.open()
    try:
        record = await store.get_session("crashed")
        assert record is not None and record.status is SessionStatus.ERROR
    finally:
        await store.close()
