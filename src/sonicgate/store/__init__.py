"""Where sessions, connections, streaming contexts and history live."""

from __future__ import annotations

from sonicgate.config import Settings
from sonicgate.store.base import Store
from sonicgate.store.sqlite import SqliteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def make_store(settings: Settings) -> Store:
    """The store ``settings.store`` names: SQLite (embedded, the default) or PostgreSQL
    (shared by several gateway nodes)."""
    if settings.store.startswith(POSTGRES_SCHEMES):
        from sonicgate.store.postgres import PostgresStore  # psycopg loads only when used

        return PostgresStore(settings.store)
    return SqliteStore(settings.store_path)
