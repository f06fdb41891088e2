"""The echo engine: what the gateway received comes straight back."""

from __future__ import annotations

import base64

from sonicgate.engines.echo import EchoEngine
from tests.conftest import Connect, ServerFactory


async def test_audio_and_text_come_back_unchanged(
    make_server: ServerFactory, connect: Connect
) -> None:
    server = await make_server({"echo": EchoEngine()})
    client = await connect(server.ws())
    await client.send({"type": "initialize", "language": "fr-FR"})  # any language will do
    ready = await client.recv()
    assert ready["engine"] == "echo" and ready["outputAudio"]["sampleRate"] == 16_000
    pcm = bytes(range(256)) * 32
    for _ in range(3):
        await client.send({"type": "audio_chunk", "audio": base64.b64encode(pcm).decode()})
        echoed = await client.recv()
        assert echoed["type"] == "audio_response"
        assert base64.b64decode(echoed["audio"]) == pcm
    await client.send({"type": "text_message", "text": "say this back"})
    reply, _ = await client.until("text_response")
    assert reply["text"] == "say this back" and reply["isFinal"]
