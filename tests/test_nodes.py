"""Several gateway nodes on one PostgreSQL store: a conversation moves between
nodes with its history; a node that restarts after a crash marks only its own
sessions lost, and the sessions of a node that never comes back are marked lost
by the others."""

from __future__ import annotations

import asyncio

import psycopg

from sonicgate.store.base import Connection, SessionStatus, VoiceSession
from sonicgate.store.postgres import PostgresStore
from tests.conftest import ServerFactory
from tests.scripted_engine import ScriptedEngine


async def test_a_conversation_resumes_on_another_node_with_its_history(
    make_server: ServerFactory, scripted: ScriptedEngine, connect, postgres_schema: str
) -> None:
    node_a = await make_server({"scripted": scripted}, store=postgres_schema, node_id="a")
    node_b = await make_server({"scripted": scripted}, store=postgres_schema, node_id="b")
    first = await connect(node_a.ws())
    session_id = (await first.initialize())["sessionId"]
    await first.complete_turn(bytes(16_000))
    await first.final_reply()
    await first.connection.close()  # the client lost node A

    second = await connect(node_b.ws())
    ready = await second.initialize(sessionId=session_id)
    assert ready["resumed"] is True and ready["messageCount"] == 2
    assert [m.text for m in scripted.configs[-1].history] == [scripted.transcript, scripted.reply]
    await second.send({"type": "text_message", "text": "still me"})
    reply, _ = await second.until("text_response")
    assert reply["sessionId"] == session_id


async def test_a_restarting_node_marks_only_its_own_sessions_lost(
    make_server: ServerFactory, scripted: ScriptedEngine, postgres_schema: str
) -> None:
    store = PostgresStore(postgres_schema)
    await store.open()
    try:
        for node in ("a", "b"):  # each node had a live session when node A crashed
            await store.create_session(
                VoiceSession(
                    sessionId=f"s-{node}",
                    novaSonicSessionId="ns",
                    connectionId=f"conn-{node}:1",
                    userId="u",
                )
            )
        await make_server({"scripted": scripted}, store=postgres_schema, node_id="a")
        crashed = await store.get_session("s-a")
        elsewhere = await store.get_session("s-b")
    finally:
        await store.close()
    assert crashed is not None and crashed.status is SessionStatus.ERROR
    assert elsewhere is not None and elsewhere.status is SessionStatus.ACTIVE


async def test_the_sessions_of_a_node_that_fell_silent_are_marked_lost(
    make_server: ServerFactory, scripted: ScriptedEngine, postgres_schema: str
) -> None:
    store = PostgresStore(postgres_schema)
    await store.open()
    try:
        await store.create_session(
            VoiceSession(
                sessionId="s-ghost",
                novaSonicSessionId="ns",
                connectionId="conn-ghost:1",
                userId="u",
            )
        )
        await store.put_connection(Connection("conn-ghost:1", "s-ghost", "u", "type"))
        with psycopg.connect(postgres_schema, autocommit=True) as db:  # last heard of long ago
            db.execute("INSERT INTO nodes VALUES ('ghost', 0)")
        await make_server({"scripted": scripted}, store=postgres_schema, node_id="a")
        for _ in range(50):  # node A's first heartbeat runs as it starts
            record = await store.get_session("s-ghost")
            connections = await store.list_connections()
            if connections == [] and record is not None and record.status is SessionStatus.ERROR:
                break
            await asyncio.sleep(0.1)
    finally:
        await store.close()
    assert record is not None and record.status is SessionStatus.ERROR
    assert "conn-ghost:1" not in [c.connectionId for c in connections]
