"""Nova Sonic models, their voices and languages, and the engine's settings."""

from __future__ import annotations

from dataclasses import dataclass

NOVA_SONIC = "amazon.nova-sonic-v1:0"
NOVA_2_SONIC = "amazon.nova-2-sonic-v1:0"
VOICES = {
    NOVA_SONIC: ("matthew", "tiffany", "amy"),
    NOVA_2_SONIC: ("matthew", "tiffany", "amy", "olivia", "lupe", "carlos", "ambre",
                   "florian", "beatrice", "lorenzo", "greta", "lennart"),
}  # fmt: skip
LANGUAGES = {
    NOVA_SONIC: ("en-US", "en-GB"),
    NOVA_2_SONIC: ("en-US", "en-GB", "en-AU", "en-IN", "es-US", "fr-FR", "de-DE", "it-IT",
                   "pt-BR", "hi-IN"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class NovaSettings:
    model_id: str = NOVA_2_SONIC
    region: str = "us-east-1"
    endpoint_uri: str | None = None  # a proxy, a VPC endpoint, or the tests' emulator
    ca_file: str | None = None  # extra CA bundle to trust for that endpoint
    voice: str = "matthew"
    # Nova closes a stream after ~8 minutes: move to a fresh one at a turn boundary
    # after this many seconds.
    rotate_after: float = 7 * 60
    endpointing: str = "MEDIUM"  # Nova 2's turn-detection sensitivity: HIGH, MEDIUM, LOW
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.9
