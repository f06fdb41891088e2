"""Turn audio in an S3-compatible bucket (AWS S3, MinIO, ...), through boto3 in a thread.

Retention lists every object under the prefix and deletes the old ones in batches,
which suits thousands of recordings. For a large bucket, a lifecycle rule that
expires objects under the prefix after the retention days is cheaper: the service
deletes them itself, and the cleanup's listing then finds nothing to delete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from sonicgate.store.audio import audio_key, check_session_id

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef, ObjectTypeDef


class S3AudioStore:
    """Objects at ``<prefix>/<session_id>/<turn:05d>-<role>.wav`` in ``bucket``; keys
    are relative to the prefix, as FileAudioStore's are to its root.

    Credentials and region come from the standard AWS chain (environment, profile,
    role); the service from ``endpoint_url``, else AWS_ENDPOINT_URL_S3, else AWS S3.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        # An S3-compatible server (http://minio:9000) has no DNS name per bucket: name
        # the bucket in the path there.
        config = Config(s3={"addressing_style": "path"}) if endpoint_url else None
        # boto3's clients are thread-safe, so one serves every asyncio.to_thread call.
        self._client: S3Client = boto3.client("s3", endpoint_url=endpoint_url, config=config)

    async def save(self, session_id: str, turn: int, role: str, wav: bytes) -> str:
        key = audio_key(session_id, turn, role)
        # A PUT replaces the object whole: readers never see part of one.
        await asyncio.to_thread(
            self._client.put_object,
            Bucket=self.bucket,
            Key=self.prefix + key,
            Body=wav,
            ContentType="audio/wav",
        )
        return key

    async def delete_older_than(self, cutoff_epoch_seconds: float) -> int:
        return await asyncio.to_thread(self._delete_older_than, cutoff_epoch_seconds)

    def _delete_older_than(self, cutoff: float) -> int:
        deleted = 0
        # A listing page holds at most 1000 objects, as many as one DeleteObjects takes.
        for page in self._pages(""):
            old: list[ObjectIdentifierTypeDef] = [
                {"Key": item["Key"]}
                for item in page
                if _is_recording(item["Key"].removeprefix(self.prefix))
                and item["LastModified"].timestamp() < cutoff
            ]
            if not old:
                continue
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": old, "Quiet": True}
            )
            if errors := response.get("Errors"):
                # Audio past retention must not stay unnoticed.
                raise RuntimeError(f"could not delete {len(errors)} audio objects: {errors[0]}")
            deleted += len(old)
        return deleted

    async def list_keys(self, session_id: str) -> list[str]:
        check_session_id(session_id)
        return await asyncio.to_thread(self._list_keys, session_id)

    def _list_keys(self, session_id: str) -> list[str]:
        keys = (
            item["Key"].removeprefix(self.prefix)
            for page in self._pages(f"{session_id}/")
            for item in page
        )
        return sorted(key for key in keys if _is_recording(key))

    def _pages(self, under: str) -> Iterator[list[ObjectTypeDef]]:
        """The objects whose keys start with ``prefix + under``, a listing page at a time."""
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + under):
            yield page.get("Contents", [])


def _is_recording(key: str) -> bool:
    """Whether a key (relative to the prefix) has the layout this store writes: other
    objects in a shared bucket are neither listed nor deleted."""
    session_id, _, name = key.partition("/")
    return bool(session_id) and "/" not in name and name.endswith(".wav")
