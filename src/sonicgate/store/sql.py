"""The SQL stores' one source: schema and migrations, statements, row mappers and the
``Store`` methods, written once for SQLite and PostgreSQL.

What the two spell differently is a ``Dialect``; ``SqliteStore`` and
``PostgresStore`` bring only their driver (``SqlStore._rows`` and
``SqlStore._execute``) and their migration runner's locking. Columns are named
after the record fields (camelCase, so quoted), and rows map onto records directly.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

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
from sonicgate.store.base import SessionExists

type Params = Mapping[str, object]
type Row = Mapping[str, Any]
type Step = tuple[str, Params]  # a statement and its parameters, by name


@dataclass(frozen=True)
class Dialect:
    """What SQLite and PostgreSQL spell differently in this schema and its statements."""

    # ``re.sub`` replacement turning the statements' ``:name`` into a named parameter.
    parameter: str
    # The migrations' column types and columns, by the names they use there: {real},
    # {blob}, {json}, {serial_key} and {seq_column}.
    types: Mapping[str, str]
    # The listings' tiebreak for rows created in the same instant, their insertion
    # order: SQLite's rowid, or (PostgreSQL has none) the ``seq`` of {seq_column}.
    insertion_order: str
    # A JSON column's value as the driver returns it, decoded: SQLite keeps the text,
    # psycopg decodes JSONB itself.
    json_value: Callable[[Any], Any]


SQLITE = Dialect(
    parameter=r":\1",
    types={
        "real": "REAL",
        "blob": "BLOB",
        "json": "TEXT",
        "serial_key": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "seq_column": "",
    },
    insertion_order="rowid",
    json_value=json.loads,
)
POSTGRES = Dialect(
    parameter=r"%(\1)s",
    types={
        "real": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "json": "JSONB",
        "serial_key": "BIGSERIAL PRIMARY KEY",
        "seq_column": ",\n        seq BIGSERIAL",
    },
    insertion_order="seq",
    json_value=lambda value: value,
)

# Migration N (1-based) takes the schema from version N-1 to N; only ever append.
# Both dialects share the numbering, and ``schema_version`` holds the last one run.
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
        "totalDuration" {real},
        "messageCount" INTEGER NOT NULL{seq_column}
    );
    CREATE INDEX sessions_by_status ON sessions (status);
    CREATE TABLE connections (
        "connectionId" TEXT PRIMARY KEY,
        "sessionId" TEXT,
        "userId" TEXT NOT NULL,
        dialect TEXT NOT NULL,
        "connectedAt" TEXT NOT NULL{seq_column}
    );
    CREATE TABLE contexts (
        "sessionId" TEXT PRIMARY KEY,
        "connectionId" TEXT NOT NULL,
        "userId" TEXT NOT NULL,
        "audioFormat" TEXT NOT NULL,
        language TEXT NOT NULL,
        model TEXT NOT NULL,
        chunks {json} NOT NULL,  -- array of sequence numbers
        "transcriptionBuffer" TEXT NOT NULL,
        "processingState" TEXT NOT NULL
    );
    CREATE TABLE messages (
        id {serial_key},
        "sessionId" TEXT NOT NULL,
        role TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX messages_by_session ON messages ("sessionId", id);
    """,
    """
    CREATE TABLE nodes (
        "nodeId" TEXT PRIMARY KEY,
        "seenAt" {real} NOT NULL  -- epoch seconds
    );
    """,
    """
    CREATE TABLE turn_audio (
        "sessionId" TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        pcm {blob} NOT NULL,
        PRIMARY KEY ("sessionId", sequence)
    );
    """,
    # Who a session belongs to: the identity of the credential that started it.
    """
    ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    """,
)
CREATE_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
READ_VERSION = "SELECT coalesce(max(version), 0) AS version FROM schema_version"

SESSION_COLUMNS = tuple(f.name for f in fields(VoiceSession))
CONNECTION_COLUMNS = tuple(f.name for f in fields(Connection))
CONTEXT_COLUMNS = tuple(f.name for f in fields(StreamingContext))


def _names(columns: tuple[str, ...]) -> str:
    return ", ".join(f'"{column}"' for column in columns)


def _select(table: str, columns: tuple[str, ...]) -> str:
    return f"SELECT {_names(columns)} FROM {table}"


def _insert(table: str, columns: tuple[str, ...]) -> str:
    values = ", ".join(f":{column}" for column in columns)
    return f"INSERT INTO {table} ({_names(columns)}) VALUES ({values})"


def _upsert(table: str, columns: tuple[str, ...], key_length: int = 1) -> str:
    """Insert, or update in place (the row keeps its place in the insertion order);
    the first ``key_length`` columns are the key."""
    key, rest = columns[:key_length], columns[key_length:]
    updates = ", ".join(f'"{column}" = excluded."{column}"' for column in rest)
    return f"{_insert(table, columns)} ON CONFLICT ({_names(key)}) DO UPDATE SET {updates}"


class Statements:
    """Every statement the stores run, in one dialect; parameters go by name."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.migrations = tuple(script.format_map(dialect.types) for script in MIGRATIONS)

        def sql(text: str) -> str:  # the statements hold no ':' of their own
            return re.sub(r":(\w+)", dialect.parameter, text)

        by_creation = f'ORDER BY "createdAt", {dialect.insertion_order}'
        sessions = _select("sessions", SESSION_COLUMNS)
        # messageCount is left out: append_message keeps it, in the same transaction as
        # the message, so a record written back from memory can never undo a count.
        kept = ", ".join(f'"{c}" = :{c}' for c in SESSION_COLUMNS[1:] if c != "messageCount")
        self.insert_session = sql(_insert("sessions", SESSION_COLUMNS))
        self.update_session = sql(f'UPDATE sessions SET {kept} WHERE "sessionId" = :sessionId')
        self.get_session = sql(f'{sessions} WHERE "sessionId" = :sessionId')
        self.list_sessions = sql(f"{sessions} {by_creation}")
        self.list_sessions_by_status = sql(f"{sessions} WHERE status = :status {by_creation}")
        self.put_connection = sql(_upsert("connections", CONNECTION_COLUMNS))
        self.delete_connection = sql('DELETE FROM connections WHERE "connectionId" = :connectionId')
        self.list_connections = sql(
            f"{_select('connections', CONNECTION_COLUMNS)}"
            f' ORDER BY "connectedAt", {dialect.insertion_order}'
        )
        self.put_context = sql(_upsert("contexts", CONTEXT_COLUMNS))
        self.get_context = sql(
            f'{_select("contexts", CONTEXT_COLUMNS)} WHERE "sessionId" = :sessionId'
        )
        # The message only if its session is there (else it would be nobody's).
        self.append_message = sql(
            'INSERT INTO messages ("sessionId", role, text)'
            ' SELECT "sessionId", :role, :text FROM sessions WHERE "sessionId" = :sessionId'
        )
        self.count_message = sql(
            'UPDATE sessions SET "messageCount" = "messageCount" + 1 WHERE "sessionId" = :sessionId'
        )
        self.history = sql(
            'SELECT role, text FROM messages WHERE "sessionId" = :sessionId ORDER BY id'
        )
        self.save_turn_audio = sql(
            _upsert("turn_audio", ("sessionId", "sequence", "pcm"), key_length=2)
        )
        self.turn_audio = sql(
            'SELECT sequence, pcm FROM turn_audio WHERE "sessionId" = :sessionId ORDER BY sequence'
        )
        self.clear_turn_audio = sql('DELETE FROM turn_audio WHERE "sessionId" = :sessionId')
        self.heartbeat = sql(_upsert("nodes", ("nodeId", "seenAt")))
        self.silent_nodes = sql('SELECT "nodeId" FROM nodes WHERE "seenAt" < :since')
        self.forget_silent_node = sql(
            'DELETE FROM nodes WHERE "nodeId" = :nodeId AND "seenAt" < :since'
        )

    def migrations_after(self, version: int) -> list[str]:
        """The scripts that take a database from schema ``version`` to the newest, each
        recording the version it reaches: a runner runs each in one transaction."""
        if version > len(self.migrations):
            raise RuntimeError(
                f"database schema version {version} is newer than this sonicgate supports "
                f"({len(self.migrations)})"
            )
        return [
            f"{script}\nDELETE FROM schema_version;\nINSERT INTO schema_version VALUES ({number});"
            for number, script in enumerate(self.migrations[version:], start=version + 1)
        ]


def _session_params(session: VoiceSession) -> dict[str, object]:
    return {**asdict(session), "status": str(session.status)}


def _session(row: Row) -> VoiceSession:
    return VoiceSession(**{**row, "status": SessionStatus(row["status"])})


def _context_params(context: StreamingContext) -> dict[str, object]:
    return {
        **asdict(context),
        "chunks": json.dumps(context.chunks),
        "processingState": str(context.processingState),
    }


def _context(row: Row, dialect: Dialect) -> StreamingContext:
    return StreamingContext(
        **{
            **row,
            "chunks": dialect.json_value(row["chunks"]),
            "processingState": ProcessingState(row["processingState"]),
        }
    )


class SqlStore(ABC):
    """The ``Store`` over SQL: each method once, for either dialect. A subclass brings
    the driver: ``open`` and ``close`` too, ``_rows`` and ``_execute``. Each method takes its
    parameters before its first ``await``: callers go on changing their records."""

    _sql: ClassVar[Statements]
    _duplicate_key: ClassVar[type[Exception]]  # the driver's error for a key taken

    @abstractmethod
    async def _rows(self, statement: str, params: Params) -> list[Row]:
        """What the statement returns, once what it changed is committed."""

    @abstractmethod
    async def _execute(self, *steps: Step) -> list[int]:
        """Runs the statements in one transaction; how many rows each changed."""

    async def create_session(self, session: VoiceSession) -> None:
        try:
            await self._execute((self._sql.insert_session, _session_params(session)))
        except self._duplicate_key as exc:
            raise SessionExists(session.sessionId) from exc

    async def get_session(self, session_id: str) -> VoiceSession | None:
        rows = await self._rows(self._sql.get_session, {"sessionId": session_id})
        return _session(rows[0]) if rows else None

    async def update_session(self, session: VoiceSession) -> None:
        session.updatedAt = utc_now()
        [updated] = await self._execute((self._sql.update_session, _session_params(session)))
        if updated == 0:
            raise KeyError(f"no session {session.sessionId!r}")

    async def list_sessions(self, status: SessionStatus | None = None) -> list[VoiceSession]:
        if status is None:
            rows = await self._rows(self._sql.list_sessions, {})
        else:
            rows = await self._rows(self._sql.list_sessions_by_status, {"status": str(status)})
        return [_session(row) for row in rows]

    async def put_connection(self, connection: Connection) -> None:
        await self._execute((self._sql.put_connection, asdict(connection)))

    async def delete_connection(self, connection_id: str) -> None:
        await self._execute((self._sql.delete_connection, {"connectionId": connection_id}))

    async def list_connections(self) -> list[Connection]:
        return [Connection(**row) for row in await self._rows(self._sql.list_connections, {})]

    async def put_context(self, context: StreamingContext) -> None:
        await self._execute((self._sql.put_context, _context_params(context)))

    async def get_context(self, session_id: str) -> StreamingContext | None:
        rows = await self._rows(self._sql.get_context, {"sessionId": session_id})
        return _context(rows[0], self._sql.dialect) if rows else None

    async def append_message(self, session_id: str, message: Message) -> None:
        message_params = {"sessionId": session_id, "role": str(message.role), "text": message.text}
        # The message and the count commit together or not at all.
        added, _ = await self._execute(
            (self._sql.append_message, message_params),
            (self._sql.count_message, {"sessionId": session_id}),
        )
        if added == 0:
            raise KeyError(f"no session {session_id!r}")

    async def history(self, session_id: str) -> list[Message]:
        rows = await self._rows(self._sql.history, {"sessionId": session_id})
        return [Message(Role(row["role"]), row["text"]) for row in rows]

    async def save_turn_audio(self, session_id: str, sequence: int, pcm: bytes) -> None:
        params = {"sessionId": session_id, "sequence": sequence, "pcm": pcm}
        await self._execute((self._sql.save_turn_audio, params))

    async def turn_audio(self, session_id: str) -> list[tuple[int, bytes]]:
        rows = await self._rows(self._sql.turn_audio, {"sessionId": session_id})
        return [(row["sequence"], bytes(row["pcm"])) for row in rows]

    async def clear_turn_audio(self, session_id: str) -> None:
        await self._execute((self._sql.clear_turn_audio, {"sessionId": session_id}))

    async def heartbeat(self, node_id: str) -> None:
        await self._execute((self._sql.heartbeat, {"nodeId": node_id, "seenAt": time.time()}))

    async def silent_nodes(self, since_epoch: float) -> list[str]:
        rows = await self._rows(self._sql.silent_nodes, {"since": since_epoch})
        return sorted(row["nodeId"] for row in rows)

    async def forget_silent_node(self, node_id: str, since_epoch: float) -> None:
        params = {"nodeId": node_id, "since": since_epoch}
        await self._execute((self._sql.forget_silent_node, params))
