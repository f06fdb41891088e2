"""Server settings, with the defaults a single machine wants."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get("SONICGATE_DATA_DIR", Path(base) / "sonicgate"))


def check_public_url(url: str) -> str:
    """``url`` if it can be the gateway's public URL: http(s)://host[:port][/prefix]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not a public URL: give https://host[:port][/prefix]")
    return url


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "local"
    # "sqlite" (a file in the data dir), "sqlite:///path/to/file.db", or a
    # PostgreSQL URL (postgresql://user@host:5432/db) shared by several nodes.
    store: str = "sqlite"
    data_dir: Path = field(default_factory=default_data_dir)
    log_level: str = "info"
    # Largest accepted WebSocket message; bigger ones get a frame_too_large error.
    max_message_bytes: int = 8 * 1024 * 1024
    # How many out-of-order voice_chunk messages are held while waiting for a gap.
    reorder_window: int = 8
    # Sessions idle longer than this are ended by /api/nova-sonic/cleanup.
    stale_after_seconds: float = 30 * 60
    audio_retention_days: float = 7.0
    # This gateway node's name, part of its connection ids: after a crash it marks
    # only its own sessions lost. Nodes sharing one store need distinct names.
    node_id: str = field(default_factory=socket.gethostname)
    # Each turn's audio: "file" (WAV files in the data dir) or s3://BUCKET[/PREFIX] on an
    # S3-compatible service (store/s3.py), at s3_endpoint_url if set, else AWS S3.
    audio_store: str = "file"
    s3_endpoint_url: str | None = None
    # Event bus for /api/events: "memory" (this process) or redis://HOST[:PORT][/DB],
    # shared by every node; out of repr, as the URL may carry a password.
    bus: str = field(default="memory", repr=False)
    # Namespaces the Redis channel (<prefix>:events), so deployments can share a Redis.
    bus_prefix: str = "sonicgate"

    # Access control (server/access.py). Auth is off unless an API key, a JWT
    # secret (HS256) or a JWT public key (RS256) is set. Secrets stay out of repr.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Keys of operators: they see every session's events and clean up every session.
    operator_keys: tuple[str, ...] = field(default=(), repr=False)
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key_file: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None  # the 'iss' JWTs must carry, if set
    # Browser origins allowed on the API; empty allows any.
    allowed_origins: tuple[str, ...] = ()
    # Per client (JWT subject, API key, or remote address when auth is off); 0 = unlimited.
    max_messages_per_second: float = 50.0
    max_requests_per_second: float = 10.0
    max_sessions_per_client: int = 10
    max_turn_audio_seconds: float = 0.0
    max_session_seconds: float = 0.0
    # A connection that neither sends nor receives for this long is closed; 0: never.
    idle_timeout_seconds: float = 300.0
    max_connections: int = 5000  # WebSocket connections open at once on this node
    # Replies queued for a client that does not read, in messages and bytes; past
    # either, it is cut off (close 1008) rather than grow the server's memory.
    outbox_messages: int = 2048
    outbox_bytes: int = 8 * 1024 * 1024
    # Addresses of proxies whose X-Forwarded-For is believed; none by default.
    forwarded_allow_ips: str = ""
    # Phone calls (server/twilio.py): the Twilio account's auth token, which signs its
    # requests (a secret, out of repr), and the URL Twilio reaches this gateway at
    # (https://host[/prefix], behind a TLS proxy), else the request's own.
    twilio_auth_token: str | None = field(default=None, repr=False)
    public_url: str | None = None

    @property
    def ws_max_size(self) -> int:
        """The largest frame the server reads: a little past ``max_message_bytes``, so a
        message just over the limit gets a ``frame_too_large`` error in the client's
        dialect; a larger one is refused by closing with 1009, before it is buffered."""
        return self.max_message_bytes + 64 * 1024

    @property
    def store_path(self) -> Path:
        """The SQLite file of a 'sqlite' or sqlite:///PATH store."""
        if self.store == "sqlite":
            return self.data_dir / "sonicgate.db"
        return Path(self.store.removeprefix("sqlite:///"))

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"
