"""Events for UIs: session, transcription and response events."""

from __future__ import annotations

from urllib.parse import urlsplit

from sonicgate.bus.base import Bus
from sonicgate.bus.memory import MemoryBus
from sonicgate.bus.redis import RedisBus

BUS_FORMS = "'memory' or redis://[:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)"


def check_bus_url(url: str) -> str:
    """``url`` if a bus can be built from it, else ``ValueError`` naming the accepted forms.

    The message leaves the URL out: it may carry a password.
    """
    if url == "memory" or _is_redis_url(url):
        return url
    raise ValueError(f"unsupported bus URL: use {BUS_FORMS}")


def _is_redis_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return False
    db = parts.path.strip("/")
    return (
        parts.scheme in ("redis", "rediss")
        and bool(parts.hostname)
        and port != 0
        and (not db or db.isdigit())
    )


def open_bus(url: str, prefix: str) -> Bus:
    """The bus ``url`` names (see ``check_bus_url``); ``prefix`` namespaces Redis channels."""
    if check_bus_url(url) == "memory":
        return MemoryBus()
    return RedisBus(url, prefix)
