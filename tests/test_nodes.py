"""Several gateway nodes on one PostgreSQL store: a conversation moves between
nodes with its history; a node that restarts after a crash marks only its own
sessions lost, and the sessions of a node that never comes back are marked lost
by the others."""

from __future__ import annotations

import asyncio
import base64
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sonicgate.domain import Connection, SessionStatus, VoiceSession
from sonicgate.store.postgres import PostgresStore
from tests.conftest import Client, Connect, RunningServer, ServerFactory
from tests.scripted_engine import ScriptedEngine, tone
from tests.test_access import refused
from tests.test_bad_input import B64, expect_error


async def two_nodes(
    make_server: ServerFactory, scripted: ScriptedEngine, **shared: str
) -> tuple[RunningServer, RunningServer]:
    """Gateway nodes 'a' and 'b' sharing what ``shared`` names (a store, a bus)."""
    node_a = await make_server({"scripted": scripted}, node_id="a", **shared)
    node_b = await make_server({"scripted": scripted}, node_id="b", **shared)
    return node_a, node_b


async def test_a_conversation_resumes_on_another_node_with_its_history(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, postgres_schema: str
) -> None:
    node_a, node_b = await two_nodes(make_server, scripted, store=postgres_schema)
    first = await connect(node_a.ws())
    session_id = (await first.initialize())["sessionId"]
    await first.complete_turn(bytes(16_000))
    await first.final_reply()
    await first.close()  # the client lost node A

    second = await connect(node_b.ws())
    ready = await second.initialize(sessionId=session_id)
    assert ready["resumed"] is True and ready["messageCount"] == 2
    assert [m.text for m in scripted.configs[-1].history] == [scripted.transcript, scripted.reply]
    await second.send({"type": "text_message", "text": "still me"})
    reply, _ = await second.until("text_response")
    assert reply["sessionId"] == session_id


@pytest.mark.parametrize("registry", ["store", "redis"])
async def test_status_on_any_node_counts_the_connections_of_every_node(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    postgres_schema: str,
    registry: str,
    request: pytest.FixtureRequest,
) -> None:
    shared: dict[str, str] = {"store": postgres_schema}
    if registry == "redis":  # nodes sharing a Redis bus keep the registry there
        shared |= {"bus": request.getfixturevalue("redis_url")}
        shared |= {"bus_prefix": request.getfixturevalue("bus_prefix")}
    node_a, node_b = await two_nodes(make_server, scripted, **shared)
    for node, clients in ((node_a, 1), (node_b, 2)):
        for _ in range(clients):
            await (await connect(node.ws())).initialize()
    for node in (node_a, node_b):
        async with node.http() as http:
            status = (await http.get("/api/nova-sonic/status")).json()
        assert status["connectionsByNode"] == {"a": 1, "b": 2}
        assert (status["status"], status["store"], status["registry"]) == ("ok", "ok", "ok")
        assert status["activeConnections"] == 3
        assert status["node"] == node.settings.node_id


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


async def test_audio_acknowledged_before_a_node_is_lost_is_heard_on_the_next(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, postgres_schema: str
) -> None:
    """The first seed's numbered chunks: the turn under way moves with the session."""
    node_a, node_b = await two_nodes(make_server, scripted, store=postgres_schema)
    second = tone(1.0, 16_000)

    async def chunk(client: Client, session_id: str, number: int, final: bool = False) -> None:
        data = {"audioData": base64.b64encode(second).decode(), "sequenceNumber": number}
        await client.send(
            {
                "action": "voice_chunk",
                "sessionId": session_id,
                "data": {**data, "audioFormat": "pcm16", "isFinal": final},
            }
        )

    first = await connect(node_a.ws())
    start = {"action": "voice_session_start", "userId": "u", "data": {"audioFormat": "pcm16"}}
    await first.send(start)
    session_id = (await first.recv())["sessionId"]
    for number in (1, 2, 3):
        await chunk(first, session_id, number)
    partial, _ = await first.until("voice_transcription_partial")
    acknowledged = partial["data"]["sequenceNumber"]
    assert acknowledged is not None and acknowledged >= 1
    await first.close()  # node A is lost with the turn under way

    moved = await connect(node_b.ws())
    await moved.send({**start, "sessionId": session_id})
    assert (await moved.recv())["resumed"] is True
    for number in range(acknowledged + 1, 6):
        await chunk(moved, session_id, number, final=number == 5)
    _, before = await moved.until("voice_response_triggered")
    # Chunks kept after the last acknowledgment and sent again are told apart, not used twice.
    errors = {m["data"]["code"] for m in before if m["type"] == "voice_error"}
    assert errors <= {"duplicate_chunk"}
    recording = node_b.settings.audio_dir / session_id / "00001-user.wav"
    with wave.open(str(recording)) as wav:
        assert wav.getnframes() == 5 * 16_000  # all five seconds: none lost, none twice


NodePair = Callable[..., Awaitable[tuple[RunningServer, RunningServer]]]


@pytest.fixture
def sharing_redis(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    redis_url: str,
    bus_prefix: str,
    tmp_path: Path,
) -> NodePair:
    async def start(**limits: float) -> tuple[RunningServer, RunningServer]:
        """Nodes 'a' and 'b' sharing a Redis bus (each with a store of its own)."""
        node_a, node_b = [
            await make_server(
                {"scripted": scripted},
                node_id=name,
                data_dir=tmp_path / name,
                bus=redis_url,
                bus_prefix=bus_prefix,
                **limits,
            )
            for name in ("a", "b")
        ]
        return node_a, node_b

    return start


async def test_a_clients_handshake_rate_holds_across_nodes(
    sharing_redis: NodePair, connect: Connect
) -> None:
    node_a, node_b = await sharing_redis(max_requests_per_second=1)  # 2 in any 2 seconds
    for node in (node_a, node_b):
        await connect(node.ws())
    for node in (node_a, node_b):  # node A alone would have let a second one in
        status, body = await refused(connect, node.ws())
        assert (status, body["code"]) == (429, "rate_limited")


async def test_a_clients_message_rate_holds_across_nodes(
    sharing_redis: NodePair, connect: Connect
) -> None:
    node_a, node_b = await sharing_redis(max_messages_per_second=5)  # 10 in any 2 seconds
    clients = [await connect(node.ws()) for node in (node_a, node_b)]
    for client in clients:
        await client.initialize()
    for _ in range(6):
        for client in clients:
            await client.send({"type": "audio_chunk", "audio": B64})
    errors = [m for client in clients for m in await drain(client) if m["type"] == "error"]
    # 14 messages: each node alone would have taken its 7.
    assert [error["code"] for error in errors] == ["rate_limited"] * 4


async def test_a_clients_session_cap_holds_across_nodes(
    sharing_redis: NodePair, connect: Connect
) -> None:
    node_a, node_b = await sharing_redis(max_sessions_per_client=2)
    first = await connect(node_a.ws())
    await first.initialize()
    await (await connect(node_b.ws())).initialize()
    for node in (node_a, node_b):  # node A alone holds one session
        extra = await connect(node.ws())
        await extra.send({"type": "initialize"})
        await expect_error(extra, "too_many_sessions")
    await first.send({"type": "end_conversation"})
    await first.until("conversation_ended")
    await (await connect(node_b.ws())).initialize()  # one left: another may start


async def drain(client: Client, quiet: float = 0.5) -> list[dict[str, Any]]:
    """Every message until the connection goes quiet."""
    messages = []
    try:
        while True:
            messages.append(await client.recv(quiet))
    except TimeoutError:
        return messages


async def test_a_live_node_taken_for_silent_after_a_store_outage_keeps_its_connections(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, postgres_schema: str
) -> None:
    """A PostgreSQL outage longer than the silence keeps every node from beating; once
    it is back, the first node to beat takes the others for gone. They are alive: their
    conversations go on, and the registry must count their connections again."""
    node_b = await make_server({"scripted": scripted}, store=postgres_schema, node_id="b")
    client = await connect(node_b.ws())
    session_id = (await client.initialize())["sessionId"]
    with psycopg.connect(postgres_schema, autocommit=True) as db:  # b's beats were lost
        db.execute('UPDATE nodes SET "seenAt" = 0 WHERE "nodeId" = \'b\'')
    node_a = await make_server({"scripted": scripted}, store=postgres_schema, node_id="a")
    store = PostgresStore(postgres_schema)
    await store.open()
    try:
        for _ in range(50):  # node A's first heartbeat runs as it starts
            record = await store.get_session(session_id)
            if record is not None and record.status is SessionStatus.ERROR:
                break
            await asyncio.sleep(0.1)
    finally:
        await store.close()
    await client.send({"type": "text_message", "text": "still talking on b"})
    reply, _ = await client.final_reply()
    assert reply["text"] == scripted.reply
    await node_b.app.state.manager.services.registry.renew()  # b's next heartbeat
    for node in (node_a, node_b):
        async with node.http() as http:
            status = (await http.get("/api/nova-sonic/status")).json()
        assert status["connectionsByNode"] == {"b": 1}, status


async def test_a_conversation_streaming_on_another_node_is_not_ended_by_a_cleanup(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, postgres_schema: str
) -> None:
    """A user streams audio on node A for longer than the stale limit, no turn ended
    yet: the session is in use. Node A's cleanup counts the chunks as activity and
    leaves it alone; node B's, on the same store, must not end it either."""
    node_a, node_b = [
        await make_server(
            {"scripted": scripted}, node_id=name, store=postgres_schema, stale_after_seconds=1
        )
        for name in ("a", "b")
    ]
    client = await connect(node_a.ws())
    session_id = (await client.initialize())["sessionId"]
    for _ in range(8):  # 1.6 s of chunks (too short for a transcript): still talking
        await client.send({"type": "audio_chunk", "audio": B64})
        await asyncio.sleep(0.2)
    ended: dict[str, int] = {}
    for node in (node_a, node_b):
        async with node.http() as http:
            response = await http.post("/api/nova-sonic/cleanup")
        ended[node.settings.node_id] = response.json()["endedSessions"]
    store = PostgresStore(postgres_schema)
    await store.open()
    try:
        record = await store.get_session(session_id)
    finally:
        await store.close()
    assert ended == {"a": 0, "b": 0}
    assert record is not None and record.status is SessionStatus.ACTIVE
