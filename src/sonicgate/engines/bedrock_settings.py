"""The Bedrock engine's settings, apart from the engine: the command line reads
them without importing boto3 and the local models."""

from __future__ import annotations

from dataclasses import dataclass

CLAUDE_3_HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


@dataclass(frozen=True, slots=True)
class BedrockSettings:
    model_id: str = CLAUDE_3_HAIKU
    region: str = "us-east-1"
    endpoint_url: str | None = None  # a proxy, a VPC endpoint, or the tests' emulator
    ca_file: str | None = None  # CA bundle to verify that endpoint with
    # History sent with each turn, in tokens: each turn pays for all of it, so far
    # less than Claude's 200k.
    context_tokens: int = 16_000
    timeout: float = 30.0  # seconds to connect, and between two events of a reply
    # Concurrent replies across all sessions.
    workers: int = 8
