"""The embedded ``Store``: one SQLite file in WAL mode.

``sqlite3`` blocks, so every call runs on one dedicated worker thread that owns
the connection: calls are serialized in arrival order and the event loop never
waits on the disk. The schema, statements and methods are ``sonicgate.store.sql``'s.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sonicgate.store.sql import (
    CREATE_VERSION_TABLE,
    READ_VERSION,
    SQLITE,
    Params,
    Row,
    SqlStore,
    Statements,
    Step,
)


class SqliteStore(SqlStore):
    _sql = Statements(SQLITE)
    _duplicate_key = sqlite3.IntegrityError

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
        self._db.execute(CREATE_VERSION_TABLE)
        version = self._db.execute(READ_VERSION).fetchone()["version"]
        for script in self._sql.migrations_after(version):
            # One transaction per step, so a failed migration leaves the old schema intact.
            self._db.executescript(f"BEGIN IMMEDIATE; {script} COMMIT;")

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

    async def _rows(self, statement: str, params: Params) -> list[Row]:
        def job(db: sqlite3.Connection) -> list[Row]:
            with db:  # commits a DELETE ... RETURNING once its rows are read
                return [dict(row) for row in db.execute(statement, params)]

        return await self._run(job)

    async def _execute(self, *steps: Step) -> list[int]:
        def job(db: sqlite3.Connection) -> list[int]:
            with db:
                return [db.execute(statement, params).rowcount for statement, params in steps]

        return await self._run(job)
