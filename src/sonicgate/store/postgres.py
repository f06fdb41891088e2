"""The shared ``Store``: PostgreSQL, for several gateway nodes at once.

Same records and semantics as the SQLite store, over a psycopg 3 connection
pool. Migrations run at open under an advisory lock, so nodes starting
together migrate once. Columns keep the records' camelCase names (quoted).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, fields
from typing import Any

from psycopg import AsyncConnection, OperationalError, sql
from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sonicgate.domain import (
    Connection,
    Message,
    ProcessingState,
    Role,
    SessionStatus,
    StreamingContext,
    VoiceSession,
    utc_now,
)
from sonicgate.store.base import SessionExists, StoreUnavailable

# Migration N (1-based) takes the schema from version N-1 to N; only ever append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sessions (
        "sessionId" TEXT PRIMARY KEY,
        "novaSonicSessionId" TEXT NOT NULL,
        "connectionId" TEXT NOT NULL,
        "userId" TEXT NOT NULL,
        status TEXT NOT NULL,
        "createdAt" TEXT NOT NULL,
        "updatedAt" TEXT NOT NULL,
        "audioFormat" TEXT,
        "totalDuration" DOUBLE PRECISION,
        "messageCount" INTEGER NOT NULL,
        seq BIGSERIAL  -- creation order, for listings
    );
    CREATE INDEX sessions_by_status ON sessions (status);
    CREATE TABLE connections (
        "connectionId" TEXT PRIMARY KEY,
        "sessionId" TEXT,
        "userId" TEXT NOT NULL,
        dialect TEXT NOT NULL,
        "connectedAt" TEXT NOT NULL,
        seq BIGSERIAL
    );
    CREATE TABLE contexts (
        "sessionId" TEXT PRIMARY KEY,
        "connectionId" TEXT NOT NULL,
        "userId" TEXT NOT NULL,
        "audioFormat" TEXT NOT NULL,
        language TEXT NOT NULL,
        model TEXT NOT NULL,
        chunks JSONB NOT NULL,
        "transcriptionBuffer" TEXT NOT NULL,
        "processingState" TEXT NOT NULL
    );
    CREATE TABLE messages (
        id BIGSERIAL PRIMARY KEY,
        "sessionId" TEXT NOT NULL,
        role TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX messages_by_session ON messages ("sessionId", id);
    """,
    """
    CREATE TABLE nodes (
        "nodeId" TEXT PRIMARY KEY,
        "seenAt" DOUBLE PRECISION NOT NULL  -- epoch seconds
    );
    """,
    """
    CREATE TABLE turn_audio (
        "sessionId" TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        pcm BYTEA NOT NULL,
        PRIMARY KEY ("sessionId", sequence)
    );
    """,
    # Who a session belongs to: the identity of the credential that started it.
    """
    ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    """,
)
MIGRATION_LOCK = 0x50_6E_69_63  # any constant: the advisory lock all nodes agree on
CONNECT_TIMEOUT = 2.0  # seconds to wait for a pooled connection
# After a failure, calls fail at once for this long: a conversation must not wait on
# a database that is down, once per event.
RETRY_AFTER = 1.0

_SESSION_COLUMNS = tuple(f.name for f in fields(VoiceSession))
_CONNECTION_COLUMNS = tuple(f.name for f in fields(Connection))
_CONTEXT_COLUMNS = tuple(f.name for f in fields(StreamingContext))


def _insert(table: str, columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(map(sql.Placeholder, columns)),
    )


def _upsert(table: str, columns: tuple[str, ...]) -> sql.Composed:
    key, *rest = columns
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(column)) for column in rest
    )
    return sql.SQL("{} ON CONFLICT ({}) DO UPDATE SET {}").format(
        _insert(table, columns), sql.Identifier(key), updates
    )


_INSERT_SESSION = _insert("sessions", _SESSION_COLUMNS)
# messageCount is left out: append_message keeps it (see the SQLite store).
_UPDATE_SESSION = sql.SQL("UPDATE sessions SET {} WHERE {} = %(sessionId)s").format(
    sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
        for column in _SESSION_COLUMNS[1:]
        if column != "messageCount"
    ),
    sql.Identifier("sessionId"),
)
_PUT_CONNECTION = _upsert("connections", _CONNECTION_COLUMNS)
_PUT_CONTEXT = _upsert("contexts", _CONTEXT_COLUMNS)


def _session(row: dict[str, Any]) -> VoiceSession:
    values = {name: row[name] for name in _SESSION_COLUMNS}
    values["status"] = SessionStatus(values["status"])
    return VoiceSession(**values)


def _context(row: dict[str, Any]) -> StreamingContext:
    values = dict(row)
    values["processingState"] = ProcessingState(values["processingState"])
    return StreamingContext(**values)


async def _migrate(db: AsyncConnection[dict[str, Any]]) -> None:
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cursor = await db.execute("SELECT coalesce(max(version), 0) AS v FROM schema_version")
        version = int((await cursor.fetchone() or {"v": 0})["v"])
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {version} is newer than this sonicgate supports "
                f"({len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await db.execute(script)
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version VALUES (%s)", (number,))


class PostgresStore:
    def __init__(self, url: str, max_connections: int = 10) -> None:
        self.url = url
        self._pool: AsyncConnectionPool[AsyncConnection[dict[str, Any]]] | None = None
        self._max_connections = max_connections
        self._down_until = 0.0

    async def open(self) -> None:
        if self._pool is not None:
            raise RuntimeError("store is already open")
        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._max_connections,
            kwargs={"row_factory": dict_row, "autocommit": True},
            connection_class=AsyncConnection[dict[str, Any]],
            # A connection the database dropped (a restart) is replaced, not handed out.
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=10)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailable("cannot reach PostgreSQL (is it running?)") from exc
        try:
            async with pool.connection() as db:
                await _migrate(db)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[dict[str, Any]]]:
        """A pooled connection; an unreachable database is ``StoreUnavailable``."""
        if self._pool is None:
            raise RuntimeError("store is not open")
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("PostgreSQL is unreachable")
        try:
            async with self._pool.connection(timeout=CONNECT_TIMEOUT) as db:
                yield db
        except (OperationalError, PoolTimeout) as exc:
            self._down_until = time.monotonic() + RETRY_AFTER
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    async def _execute(self, query: sql.Composed | str, params: Any = None) -> int:
        async with self._connection() as db:
            cursor = await db.execute(query, params)
            return int(cursor.rowcount)

    async def _rows(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        async with self._connection() as db:
            cursor = await db.execute(query, params)
            return list(await cursor.fetchall())

    async def create_session(self, session: VoiceSession) -> None:
        params = {**asdict(session), "status": str(session.status)}
        try:
            await self._execute(_INSERT_SESSION, params)
        except UniqueViolation as exc:
            raise SessionExists(session.sessionId) from exc

    async def get_session(self, session_id: str) -> VoiceSession | None:
        rows = await self._rows('SELECT * FROM sessions WHERE "sessionId" = %s', (session_id,))
        return _session(rows[0]) if rows else None

    async def update_session(self, session: VoiceSession) -> None:
        session.updatedAt = utc_now()
        params = {**asdict(session), "status": str(session.status)}
        if await self._execute(_UPDATE_SESSION, params) == 0:
            raise KeyError(f"no session {session.sessionId!r}")

    async def list_sessions(self, status: SessionStatus | None = None) -> list[VoiceSession]:
        if status is None:
            rows = await self._rows('SELECT * FROM sessions ORDER BY "createdAt", seq')
        else:
            rows = await self._rows(
                'SELECT * FROM sessions WHERE status = %s ORDER BY "createdAt", seq',
                (str(status),),
            )
        return [_session(row) for row in rows]

    async def put_connection(self, connection: Connection) -> None:
        await self._execute(_PUT_CONNECTION, asdict(connection))

    async def delete_connection(self, connection_id: str) -> None:
        await self._execute('DELETE FROM connections WHERE "connectionId" = %s', (connection_id,))

    async def list_connections(self) -> list[Connection]:
        rows = await self._rows('SELECT * FROM connections ORDER BY "connectedAt", seq')
        return [Connection(**{name: row[name] for name in _CONNECTION_COLUMNS}) for row in rows]

    async def put_context(self, context: StreamingContext) -> None:
        params = {
            **asdict(context),
            "chunks": json.dumps(context.chunks),
            "processingState": str(context.processingState),
        }
        await self._execute(_PUT_CONTEXT, params)

    async def get_context(self, session_id: str) -> StreamingContext | None:
        rows = await self._rows('SELECT * FROM contexts WHERE "sessionId" = %s', (session_id,))
        return _context(rows[0]) if rows else None

    async def append_message(self, session_id: str, message: Message) -> None:
        async with self._connection() as db, db.transaction():
            # The message and the count commit together or not at all.
            await db.execute(
                'INSERT INTO messages ("sessionId", role, text) VALUES (%s, %s, %s)',
                (session_id, str(message.role), message.text),
            )
            cursor = await db.execute(
                'UPDATE sessions SET "messageCount" = "messageCount" + 1 WHERE "sessionId" = %s',
                (session_id,),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no session {session_id!r}")

    async def history(self, session_id: str) -> list[Message]:
        rows = await self._rows(
            'SELECT role, text FROM messages WHERE "sessionId" = %s ORDER BY id', (session_id,)
        )
        return [Message(Role(row["role"]), row["text"]) for row in rows]

    async def save_turn_audio(self, session_id: str, sequence: int, pcm: bytes) -> None:
        await self._execute(
            'INSERT INTO turn_audio ("sessionId", sequence, pcm) VALUES (%s, %s, %s)'
            ' ON CONFLICT ("sessionId", sequence) DO UPDATE SET pcm = excluded.pcm',
            (session_id, sequence, pcm),
        )

    async def turn_audio(self, session_id: str) -> list[tuple[int, bytes]]:
        rows = await self._rows(
            'SELECT sequence, pcm FROM turn_audio WHERE "sessionId" = %s ORDER BY sequence',
            (session_id,),
        )
        return [(row["sequence"], bytes(row["pcm"])) for row in rows]

    async def clear_turn_audio(self, session_id: str) -> None:
        await self._execute('DELETE FROM turn_audio WHERE "sessionId" = %s', (session_id,))

    async def heartbeat(self, node_id: str) -> None:
        await self._execute(
            'INSERT INTO nodes ("nodeId", "seenAt") VALUES (%s, %s)'
            ' ON CONFLICT ("nodeId") DO UPDATE SET "seenAt" = excluded."seenAt"',
            (node_id, time.time()),
        )

    async def silent_nodes(self, since_epoch: float) -> list[str]:
        rows = await self._rows(
            'DELETE FROM nodes WHERE "seenAt" < %s RETURNING "nodeId"', (since_epoch,)
        )
        return sorted(row["nodeId"] for row in rows)
