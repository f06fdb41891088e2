"""The embedded ``Store``: one SQLite file in WAL mode.

``sqlite3`` blocks, so every call runs on one dedicated worker thread that owns
the connection: calls are serialized in arrival order and the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

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

# Columns are named after the record fields, so rows map onto records directly;
# each table's first column is its key.
# Migration N (1-based) takes the schema from version N-1 to N; only ever append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sessions (
        sessionId TEXT PRIMARY KEY,
        novaSonicSessionId TEXT NOT NULL,
        connectionId TEXT NOT NULL,
        userId TEXT NOT NULL,
        status TEXT NOT NULL,
        createdAt TEXT NOT NULL,
        updatedAt TEXT NOT NULL,
        audioFormat TEXT,
        totalDuration REAL,
        messageCount INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_status ON sessions (status);
    CREATE TABLE connections (
        connectionId TEXT PRIMARY KEY,
        sessionId TEXT,
        userId TEXT NOT NULL,
        dialect TEXT NOT NULL,
        connectedAt TEXT NOT NULL
    );
    CREATE TABLE contexts (
        sessionId TEXT PRIMARY KEY,
        connectionId TEXT NOT NULL,
        userId TEXT NOT NULL,
        audioFormat TEXT NOT NULL,
        language TEXT NOT NULL,
        model TEXT NOT NULL,
        chunks TEXT NOT NULL,  -- JSON array of sequence numbers
        transcriptionBuffer TEXT NOT NULL,
        processingState TEXT NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sessionId TEXT NOT NULL,
        role TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX messages_by_session ON messages (sessionId, id);
    """,
    """
    CREATE TABLE nodes (
        nodeId TEXT PRIMARY KEY,
        seenAt REAL NOT NULL  -- epoch seconds
    );
    """,
    """
    CREATE TABLE turn_audio (
        sessionId TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        pcm BLOB NOT NULL,
        PRIMARY KEY (sessionId, sequence)
    );
    """,
    # Who a session belongs to: the identity of the credential that started it.
    """
    ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    """,
)


def _insert(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{column}" for column in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"


def _upsert(table: str, columns: tuple[str, ...]) -> str:
    """Insert, or update in place (unlike REPLACE, the row keeps its rowid and so its order)."""
    key, *rest = columns
    updates = ", ".join(f"{column} = excluded.{column}" for column in rest)
    return f"{_insert(table, columns)} ON CONFLICT ({key}) DO UPDATE SET {updates}"


_SESSION_COLUMNS = tuple(f.name for f in fields(VoiceSession))
_CONNECTION_COLUMNS = tuple(f.name for f in fields(Connection))
_CONTEXT_COLUMNS = tuple(f.name for f in fields(StreamingContext))

_INSERT_SESSION = _insert("sessions", _SESSION_COLUMNS)
# messageCount is left out: append_message keeps it, in the same transaction as the
# message, so a record written back from memory can never undo a count.
_UPDATE_SESSION = "UPDATE sessions SET {} WHERE sessionId = :sessionId".format(
    ", ".join(
        f"{column} = :{column}" for column in _SESSION_COLUMNS[1:] if column != "messageCount"
    )
)
_PUT_CONNECTION = _upsert("connections", _CONNECTION_COLUMNS)
_PUT_CONTEXT = _upsert("contexts", _CONTEXT_COLUMNS)


def _session(row: sqlite3.Row) -> VoiceSession:
    values = dict(row)
    values["status"] = SessionStatus(values["status"])
    return VoiceSession(**values)


def _context_params(context: StreamingContext) -> dict[str, Any]:
    values = asdict(context)
    values["chunks"] = json.dumps(context.chunks)
    return values


def _context(row: sqlite3.Row) -> StreamingContext:
    values = dict(row)
    values["chunks"] = json.loads(values["chunks"])
    values["processingState"] = ProcessingState(values["processingState"])
    return StreamingContext(**values)


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] or 0
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this sonicgate supports "
            f"({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # One transaction per step, so a failed migration leaves the old schema intact.
        db.executescript(
            f"BEGIN IMMEDIATE; {script} DELETE FROM schema_version;"
            f" INSERT INTO schema_version VALUES ({number}); COMMIT;"
        )


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # touched only on the worker thread

    async def open(self) -> None:
        if self._executor is not None:
            raise RuntimeError("store is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonicgate-sqlite")
        try:
            await self._submit(self._connect)
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"cannot enable WAL on {self.path} (journal mode is {mode})")
        # Safe with WAL: a power loss can drop the last commits, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        _migrate(self._db)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            # The close job has run, so the idle thread exits by itself.
            executor.shutdown(wait=False)

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _submit[T](self, job: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def _run[T](self, job: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None  # open() connected before any job was queued
            return job(self._db)

        return await self._submit(call)

    async def create_session(self, session: VoiceSession) -> None:
        # Snapshot now: callers keep mutating their records while the job waits.
        params = asdict(session)

        def job(db: sqlite3.Connection) -> None:
            try:
                with db:
                    db.execute(_INSERT_SESSION, params)
            except sqlite3.IntegrityError as exc:
                raise SessionExists(session.sessionId) from exc

        await self._run(job)

    async def get_session(self, session_id: str) -> VoiceSession | None:
        def job(db: sqlite3.Connection) -> VoiceSession | None:
            row = db.execute("SELECT * FROM sessions WHERE sessionId = ?", (session_id,)).fetchone()
            return None if row is None else _session(row)

        return await self._run(job)

    async def update_session(self, session: VoiceSession) -> None:
        session.updatedAt = utc_now()
        params = asdict(session)

        def job(db: sqlite3.Connection) -> None:
            with db:
                if db.execute(_UPDATE_SESSION, params).rowcount == 0:
                    raise KeyError(f"no session {session.sessionId!r}")

        await self._run(job)

    async def list_sessions(self, status: SessionStatus | None = None) -> list[VoiceSession]:
        def job(db: sqlite3.Connection) -> list[VoiceSession]:
            if status is None:
                rows = db.execute("SELECT * FROM sessions ORDER BY createdAt, rowid")
            else:
                rows = db.execute(
                    "SELECT * FROM sessions WHERE status = ? ORDER BY createdAt, rowid",
                    (str(status),),
                )
            return [_session(row) for row in rows]

        return await self._run(job)

    async def put_connection(self, connection: Connection) -> None:
        params = asdict(connection)

        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute(_PUT_CONNECTION, params)

        await self._run(job)

    async def delete_connection(self, connection_id: str) -> None:
        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM connections WHERE connectionId = ?", (connection_id,))

        await self._run(job)

    async def list_connections(self) -> list[Connection]:
        def job(db: sqlite3.Connection) -> list[Connection]:
            rows = db.execute("SELECT * FROM connections ORDER BY connectedAt, rowid")
            return [Connection(**dict(row)) for row in rows]

        return await self._run(job)

    async def put_context(self, context: StreamingContext) -> None:
        params = _context_params(context)

        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute(_PUT_CONTEXT, params)

        await self._run(job)

    async def get_context(self, session_id: str) -> StreamingContext | None:
        def job(db: sqlite3.Connection) -> StreamingContext | None:
            row = db.execute("SELECT * FROM contexts WHERE sessionId = ?", (session_id,)).fetchone()
            return None if row is None else _context(row)

        return await self._run(job)

    async def append_message(self, session_id: str, message: Message) -> None:
        def job(db: sqlite3.Connection) -> None:
            with db:  # the message and the count commit together or not at all
                db.execute(
                    "INSERT INTO messages (sessionId, role, text) VALUES (?, ?, ?)",
                    (session_id, str(message.role), message.text),
                )
                updated = db.execute(
                    "UPDATE sessions SET messageCount = messageCount + 1 WHERE sessionId = ?",
                    (session_id,),
                )
                if updated.rowcount == 0:
                    raise KeyError(f"no session {session_id!r}")

        await self._run(job)

    async def history(self, session_id: str) -> list[Message]:
        def job(db: sqlite3.Connection) -> list[Message]:
            rows = db.execute(
                "SELECT role, text FROM messages WHERE sessionId = ? ORDER BY id", (session_id,)
            )
            return [Message(Role(row["role"]), row["text"]) for row in rows]

        return await self._run(job)

    async def save_turn_audio(self, session_id: str, sequence: int, pcm: bytes) -> None:
        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO turn_audio (sessionId, sequence, pcm) VALUES (?, ?, ?)",
                    (session_id, sequence, pcm),
                )

        await self._run(job)

    async def turn_audio(self, session_id: str) -> list[tuple[int, bytes]]:
        def job(db: sqlite3.Connection) -> list[tuple[int, bytes]]:
            rows = db.execute(
                "SELECT sequence, pcm FROM turn_audio WHERE sessionId = ? ORDER BY sequence",
                (session_id,),
            )
            return [(row["sequence"], bytes(row["pcm"])) for row in rows]

        return await self._run(job)

    async def clear_turn_audio(self, session_id: str) -> None:
        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM turn_audio WHERE sessionId = ?", (session_id,))

        await self._run(job)

    async def heartbeat(self, node_id: str) -> None:
        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT INTO nodes (nodeId, seenAt) VALUES (?, ?)"
                    " ON CONFLICT (nodeId) DO UPDATE SET seenAt = excluded.seenAt",
                    (node_id, time.time()),
                )

        await self._run(job)

    async def silent_nodes(self, since_epoch: float) -> list[str]:
        def job(db: sqlite3.Connection) -> list[str]:
            with db:
                rows = db.execute(
                    "DELETE FROM nodes WHERE seenAt < ? RETURNING nodeId", (since_epoch,)
                ).fetchall()
            return sorted(row["nodeId"] for row in rows)

        return await self._run(job)
