"""`make run`'s environment alone: built from scratch from the lock file by the same
setup script, with the runtime dependencies and the default models only (no test
extra), `sonicgate serve` started in it answers a typed and a spoken turn.

The rest of the suite runs in the test environment, which has more installed: an
import that only the test extra provides passes there and fails here."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import websockets

from bench.speech import silence, speak
from tests.conftest import Client

pytestmark = pytest.mark.models

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A runtime-only venv and its data dir (models joined anew)."""
    root = tmp_path_factory.mktemp("runtime")
    venv, data = root / "venv", root / "data"
    subprocess.run(
        [str(REPO / "scripts" / "setup.sh"), "--venv", str(venv)],
        env=os.environ | {"SONICGATE_DATA_DIR": str(data)},
        check=True,
        timeout=1200,
    )
    yield venv, data


LISTENING = re.compile(r"running on http://127\.0\.0\.1:(\d+)")


@pytest.fixture
async def served(runtime: tuple[Path, Path]) -> AsyncIterator[str]:
    """`sonicgate serve` in the runtime venv on a port the OS picks; its WebSocket URL."""
    venv, data = runtime
    log = data / "serve.log"
    with log.open("w") as output:
        server = await asyncio.create_subprocess_exec(
            *(str(venv / "bin" / "sonicgate"), "serve", "--port", "0", "--data-dir", str(data)),
            env=os.environ | {"HF_HUB_OFFLINE": "1"},
            stderr=output,
        )
    try:
        async with asyncio.timeout(180):
            while not (found := LISTENING.search(log.read_text())):
                assert server.returncode is None, f"serve exited: {log.read_text()[-2000:]}"
                await asyncio.sleep(0.2)
        yield f"ws://127.0.0.1:{found[1]}/api/nova-sonic/stream"
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn ends by raising the signal again, once it has shut down cleanly.
        assert await asyncio.wait_for(server.wait(), 30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in log.read_text()


async def test_the_runtime_environment_answers_typed_and_spoken_turns(served: str) -> None:
    async with websockets.connect(served, max_size=2**26) as connection:
        client = Client(connection)
        await client.initialize()

        await client.send({"type": "text_message", "text": "What is the capital of France?"})
        reply, before = await client.final_reply(within=60)
        assert "paris" in reply["text"].lower(), reply
        assert any(m["type"] == "audio_response" for m in before)

        await client.complete_turn(silence(0.3) + speak("What is two plus two?") + silence(0.3))
        heard, _ = await client.until("transcription", within=60)
        while not heard["isFinal"]:
            heard, _ = await client.until("transcription", within=60)
        assert "two" in heard["text"].lower() or "2" in heard["text"], heard
        reply, before = await client.final_reply(within=60)
        assert reply["text"].strip()
        assert any(m["type"] == "audio_response" for m in before)
