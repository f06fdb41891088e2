"""Where sessions, connections, streaming contexts, history and audio live."""

from __future__ import annotations

from urllib.parse import urlsplit

from sonicgate.config import Settings
from sonicgate.store.audio import AudioStore, FileAudioStore
from sonicgate.store.base import Store
from sonicgate.store.sqlite import SqliteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_PREFIX = "sqlite:///"
STORE_FORMS = "'sqlite' (a file in the data dir), sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
AUDIO_STORE_FORMS = "'file' (WAV files in the data dir) or s3://BUCKET[/PREFIX]"


def check_store_url(url: str) -> str:
    """``url`` if ``make_store`` can open it, else ``ValueError`` naming the accepted
    forms. The message leaves the URL out: it may carry a password."""
    if url == "sqlite" or url.startswith(POSTGRES_SCHEMES):
        return url
    if url.startswith(SQLITE_PREFIX) and url != SQLITE_PREFIX:
        return url
    raise ValueError(f"unsupported store: use {STORE_FORMS}")


def make_store(settings: Settings) -> Store:
    """The store ``settings.store`` names: SQLite (embedded, the default) or PostgreSQL
    (shared by several gateway nodes)."""
    check_store_url(settings.store)
    if settings.store.startswith(POSTGRES_SCHEMES):
        from sonicgate.store.postgres import PostgresStore  # psycopg loads only when used

        return PostgresStore(settings.store)
    return SqliteStore(settings.store_path)


def parse_audio_store(url: str) -> tuple[str, str] | None:
    """None for 'file', (bucket, prefix) for s3://BUCKET[/PREFIX]; else ValueError."""
    if url == "file":
        return None
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"unsupported audio store {url!r}: use {AUDIO_STORE_FORMS}")
    return parts.netloc, parts.path.strip("/")


def make_audio_store(settings: Settings) -> AudioStore:
    """The audio store ``settings.audio_store`` names (see ``parse_audio_store``)."""
    location = parse_audio_store(settings.audio_store)
    if location is None:
        return FileAudioStore(settings.audio_dir)
    # boto3 takes a fifth of a second to import: only servers that use S3 pay for it.
    from sonicgate.store.s3 import S3AudioStore

    bucket, prefix = location
    return S3AudioStore(bucket, prefix, endpoint_url=settings.s3_endpoint_url)
