"""The shared ``Store``: PostgreSQL, for several gateway nodes at once.

The SQLite store's schema, statements and methods (``sonicgate.store.sql``), over a
psycopg 3 connection pool. Migrations run at open under an advisory lock, so nodes
starting together migrate once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sonicgate.store.base import StoreUnavailable
from sonicgate.store.sql import (
    CREATE_VERSION_TABLE,
    POSTGRES,
    READ_VERSION,
    Params,
    Row,
    SqlStore,
    Statements,
    Step,
)

MIGRATION_LOCK = 0x50_6E_69_63  # any constant: the advisory lock all nodes agree on
CONNECT_TIMEOUT = 2.0  # seconds to wait for a pooled connection
# After a failure, calls fail at once for this long: a conversation must not wait on
# a database that is down, once per event.
RETRY_AFTER = 1.0


class PostgresStore(SqlStore):
    _sql = Statements(POSTGRES)
    _duplicate_key = UniqueViolation

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
                await self._migrate(db)
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

    async def _migrate(self, db: AsyncConnection[dict[str, Any]]) -> None:
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await db.execute(CREATE_VERSION_TABLE)
            cursor = await db.execute(READ_VERSION)
            version = int((await cursor.fetchone() or {"version": 0})["version"])
            for script in self._sql.migrations_after(version):
                await db.execute(script)

    async def _rows(self, statement: str, params: Params) -> list[Row]:
        async with self._connection() as db:
            cursor = await db.execute(statement, params)
            return list(await cursor.fetchall())

    async def _execute(self, *steps: Step) -> list[int]:
        async with (
            self._connection() as db,
            # In autocommit, one statement is a transaction by itself: no BEGIN and COMMIT.
            db.transaction() if len(steps) > 1 else contextlib.nullcontext(),
        ):
            return [(await db.execute(statement, params)).rowcount for statement, params in steps]
