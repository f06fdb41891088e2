"""The Store contract, on SQLite and on PostgreSQL alike: every method, restart and
concurrency; then what is particular to each (WAL and one worker thread; the
migration lock)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from sonicgate.domain import (
    Connection,
    Message,
    ProcessingState,
    Role,
    SessionStatus,
    StreamingContext,
    VoiceSession,
)
from sonicgate.store.base import SessionExists, Store
from sonicgate.store.postgres import PostgresStore
from sonicgate.store.sql import MIGRATIONS
from sonicgate.store.sqlite import SqliteStore
from tests.conftest import POSTGRES, Connect, ServerFactory
from tests.scripted_engine import ScriptedEngine

StoreMaker = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "nested" / "store.db")
    url: str = request.getfixturevalue("postgres_schema")
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(make_store: StoreMaker) -> AsyncIterator[Store]:
    opened = make_store()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "store.db")
    await opened.open()
    yield opened
    await opened.close()


def session(session_id: str = "s1", user_id: str = "u1") -> VoiceSession:
    return VoiceSession(
        sessionId=session_id,
        novaSonicSessionId=f"ns-{session_id}",
        connectionId="c1",
        userId=user_id,
        audioFormat="pcm",
    )


def context(session_id: str = "s1") -> StreamingContext:
    return StreamingContext(
        sessionId=session_id,
        connectionId="c1",
        userId="u1",
        audioFormat="pcm",
        language="en-US",
        model="local",
    )


def test_both_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    stores: list[Store] = [SqliteStore(tmp_path / "store.db"), PostgresStore(POSTGRES)]
    assert stores


async def test_sessions_round_trip_with_enums(store: Store) -> None:
    record = session()
    await store.create_session(record)
    loaded = await store.get_session("s1")
    assert loaded == record
    assert loaded is not None and loaded.status is SessionStatus.ACTIVE
    assert await store.get_session("missing") is None


async def test_creating_a_session_twice_fails(store: Store) -> None:
    await store.create_session(session())
    with pytest.raises(SessionExists):
        await store.create_session(session())


async def test_update_session_writes_everything_and_sets_updated_at(store: Store) -> None:
    record = session()
    record.updatedAt = "2000-01-01T00:00:00.000Z"
    await store.create_session(record)
    record.status = SessionStatus.COMPLETED
    record.totalDuration = 12.5
    record.connectionId = "c2"
    await store.update_session(record)
    assert record.updatedAt > "2000-01-01T00:00:00.000Z"
    assert await store.get_session("s1") == record


async def test_updating_a_missing_session_fails(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.update_session(session("missing"))


async def test_list_sessions_filters_by_status(store: Store) -> None:
    for name in ("a", "b", "c"):
        await store.create_session(session(name))
    ended = await store.get_session("b")
    assert ended is not None
    ended.status = SessionStatus.ERROR
    await store.update_session(ended)

    assert [s.sessionId for s in await store.list_sessions()] == ["a", "b", "c"]
    active = await store.list_sessions(SessionStatus.ACTIVE)
    assert [s.sessionId for s in active] == ["a", "c"]
    assert [s.sessionId for s in await store.list_sessions(SessionStatus.ERROR)] == ["b"]
    assert await store.list_sessions(SessionStatus.COMPLETED) == []


async def test_connections_put_replace_list_delete(store: Store) -> None:
    first = Connection(connectionId="c1", sessionId=None, userId="u1", dialect="action")
    second = Connection(connectionId="c2", sessionId="s2", userId="u2", dialect="typed")
    await store.put_connection(first)
    await store.put_connection(second)
    assert await store.list_connections() == [first, second]

    first.sessionId = "s1"
    await store.put_connection(first)
    assert await store.list_connections() == [first, second]

    await store.delete_connection("c1")
    await store.delete_connection("never-there")
    assert await store.list_connections() == [second]


async def test_contexts_put_get_replace(store: Store) -> None:
    assert await store.get_context("s1") is None
    record = context()
    await store.put_context(record)
    assert await store.get_context("s1") == record

    record.chunks = [1, 2, 3]
    record.transcriptionBuffer = "hello"
    record.processingState = ProcessingState.RESPONDING
    await store.put_context(record)
    loaded = await store.get_context("s1")
    assert loaded == record
    assert loaded is not None and loaded.processingState is ProcessingState.RESPONDING


async def test_append_message_keeps_history_and_counts(store: Store) -> None:
    await store.create_session(session("s1"))
    await store.create_session(session("s2"))
    await store.append_message("s1", Message(Role.USER, "hi"))
    await store.append_message("s1", Message(Role.ASSISTANT, "hello"))
    await store.append_message("s2", Message(Role.USER, "other"))

    history = await store.history("s1")
    assert history == [Message(Role.USER, "hi"), Message(Role.ASSISTANT, "hello")]
    assert history[1].role is Role.ASSISTANT
    first = await store.get_session("s1")
    assert first is not None and first.messageCount == 2
    assert await store.history("missing") == []


async def test_append_to_a_missing_session_fails_and_stores_nothing(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.append_message("missing", Message(Role.USER, "lost"))
    assert await store.history("missing") == []


async def test_concurrent_appends_are_all_counted(store: Store) -> None:
    await store.create_session(session())
    await asyncio.gather(
        *(store.append_message("s1", Message(Role.USER, f"m{i}")) for i in range(200))
    )
    loaded = await store.get_session("s1")
    assert loaded is not None and loaded.messageCount == 200
    texts = [m.text for m in await store.history("s1")]  # in commit order
    assert sorted(texts) == sorted(f"m{i}" for i in range(200))


async def test_silent_nodes_are_listed_until_forgotten(store: Store) -> None:
    await store.heartbeat("a")
    await store.heartbeat("b")
    assert await store.silent_nodes(time.time() - 60) == []  # both spoke just now
    since = time.time() + 1
    assert await store.silent_nodes(since) == ["a", "b"]
    assert await store.silent_nodes(since) == ["a", "b"]  # until their sessions are marked
    await store.forget_silent_node("a", since)
    assert await store.silent_nodes(since) == ["b"]
    await store.heartbeat("b")  # it spoke again after all: not forgotten
    await store.forget_silent_node("b", time.time() - 60)
    assert await store.silent_nodes(time.time() + 1) == ["b"]


async def test_turn_audio_is_kept_in_order_until_cleared(store: Store) -> None:
    for sequence in (3, 1, 2):
        await store.save_turn_audio("s1", sequence, bytes([sequence]) * 4)
    await store.save_turn_audio("s2", 1, b"other")
    await store.save_turn_audio("s1", 2, b"\x02\x02")  # a resent chunk replaces itself
    assert await store.turn_audio("s1") == [(1, b"\x01" * 4), (2, b"\x02\x02"), (3, b"\x03" * 4)]
    await store.clear_turn_audio("s1")
    assert await store.turn_audio("s1") == []
    assert await store.turn_audio("s2") == [(1, b"other")]


async def test_data_survives_a_restart(make_store: StoreMaker) -> None:
    first = make_store()
    await first.open()
    await first.create_session(session())
    await first.append_message("s1", Message(Role.USER, "remember me"))
    await first.put_context(context())
    await first.put_connection(Connection("c1", "s1", "u1", "action"))
    await first.close()

    second = make_store()
    await second.open()
    try:
        loaded = await second.get_session("s1")
        assert loaded is not None and loaded.messageCount == 1
        assert await second.history("s1") == [Message(Role.USER, "remember me")]
        assert await second.get_context("s1") == context()
        assert [c.connectionId for c in await second.list_connections()] == ["c1"]
    finally:
        await second.close()


async def test_wal_mode_and_schema_version(sqlite_store: SqliteStore) -> None:
    with closing(sqlite3.connect(sqlite_store.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS) + 1,))
        db.commit()
    newer = SqliteStore(path)
    with pytest.raises(RuntimeError, match="newer"):
        await newer.open()
    with pytest.raises(RuntimeError, match="not open"):
        await newer.get_session("s1")


async def test_work_runs_on_one_thread_off_the_loop(sqlite_store: SqliteStore) -> None:
    seen: set[int] = set()

    def job(db: sqlite3.Connection) -> None:
        seen.add(threading.get_ident())

    await asyncio.gather(*(sqlite_store._run(job) for _ in range(20)))
    assert len(seen) == 1
    assert threading.get_ident() not in seen


async def test_calls_after_close_fail(tmp_path: Path) -> None:
    closed = SqliteStore(tmp_path / "store.db")
    await closed.open()
    await closed.close()
    await closed.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="not open"):
        await closed.list_sessions()


async def test_postgres_nodes_starting_together_migrate_once(postgres_schema: str) -> None:
    nodes = [PostgresStore(postgres_schema) for _ in range(4)]
    await asyncio.gather(*(node.open() for node in nodes))
    try:
        with psycopg.connect(postgres_schema) as db:
            versions = db.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(len(MIGRATIONS),)]
        record = session()
        await nodes[0].create_session(record)
        assert await nodes[3].get_session("s1") == record  # one database for all
    finally:
        await asyncio.gather(*(node.close() for node in nodes))


async def test_postgres_refuses_a_newer_schema(postgres_schema: str) -> None:
    with psycopg.connect(postgres_schema, autocommit=True) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        await PostgresStore(postgres_schema).open()


async def test_a_server_keeps_its_conversations_in_postgres(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, postgres_schema: str
) -> None:
    server = await make_server({"scripted": scripted}, store=postgres_schema)
    client = await connect(server.ws())
    session_id = (await client.initialize())["sessionId"]
    await client.complete_turn(bytes(16_000))
    await client.final_reply()
    await client.send({"type": "end_conversation"})
    await client.until("conversation_ended")

    shared = PostgresStore(postgres_schema)  # what another node would read
    await shared.open()
    try:
        record = await shared.get_session(session_id)
        assert record is not None and record.status is SessionStatus.COMPLETED
        history = await shared.history(session_id)
        assert history == [
            Message(Role.USER, scripted.transcript),
            Message(Role.ASSISTANT, scripted.reply),
        ]
        assert record.messageCount == 2
    finally:
        await shared.close()
