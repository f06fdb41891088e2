"""Where sessions, connections, streaming contexts and history live."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from sonicgate.store.audio import AudioStore, FileAudioStore

AUDIO_STORE_FORMS = "'file' (WAV files in the data dir) or s3://BUCKET[/PREFIX]"


def parse_audio_store(url: str) -> tuple[str, str] | None:
    """None for 'file', (bucket, prefix) for s3://BUCKET[/PREFIX]; else ValueError."""
    if url == "file":
        return None
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"unsupported audio store {url!r}: use {AUDIO_STORE_FORMS}")
    return parts.netloc, parts.path.strip("/")


def open_audio_store(url: str, audio_dir: Path, s3_endpoint_url: str | None = None) -> AudioStore:
    """The audio store ``url`` names (see ``parse_audio_store``); 'file' keeps WAV files
    in ``audio_dir``."""
    location = parse_audio_store(url)
    if location is None:
        return FileAudioStore(audio_dir)
    # boto3 takes a fifth of a second to import: only servers that use S3 pay for it.
    from sonicgate.store.s3 import S3AudioStore

    bucket, prefix = location
    return S3AudioStore(bucket, prefix, endpoint_url=s3_endpoint_url)
