"""Gateway processes side by side: two ``sonicgate serve`` on one PostgreSQL and
one Redis. A conversation's events are seen through the other node; the node
holding it is killed, and the client resumes the conversation on the other."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from bench.harness import UNLIMITED, wait_ready
from sonicgate.config import default_data_dir
from tests.conftest import REDIS_URL, Connect, free_port

pytestmark = pytest.mark.models  # each node loads the local models at start


class Node:
    def __init__(self, name: str, store: str, prefix: str, data_dir: Path) -> None:
        self.port = free_port()
        command = [
            *(sys.executable, "-m", "sonicgate", "serve", "--port", str(self.port)),
            *("--node-id", name, "--engine", "echo", "--store", store),
            *("--bus", REDIS_URL, "--bus-prefix", prefix, "--data-dir", str(data_dir)),
            *("--log-level", "warning", *UNLIMITED),
        ]
        self.process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
def cluster(
    postgres_schema: str, redis_url: str, bus_prefix: str, tmp_path: Path
) -> Iterator[tuple[Node, Node]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(default_data_dir() / "models")  # installed once
    nodes = (
        Node("a", postgres_schema, bus_prefix, data_dir),
        Node("b", postgres_schema, bus_prefix, data_dir),
    )
    try:
        yield nodes
    finally:
        for node in nodes:
            node.process.kill()
            node.process.wait()


async def test_a_conversation_survives_its_node(
    cluster: tuple[Node, Node], connect: Connect
) -> None:
    node_a, node_b = cluster
    for node in cluster:
        await wait_ready(node.ws("/api/nova-sonic/stream"), within=120)
    session_id = f"cluster-{os.getpid()}"
    async with websockets.connect(node_b.ws(f"/api/events?sessionId={session_id}")) as events:
        client = await connect(node_a.ws("/api/nova-sonic/stream"))
        await client.initialize(sessionId=session_id)
        await client.send({"type": "text_message", "text": "remember me"})
        assert (await client.final_reply())[0]["text"] == "remember me"
        seen = [json.loads(await asyncio.wait_for(events.recv(), 10)) for _ in range(3)]
    assert {event["sessionId"] for event in seen} == {session_id}  # node A's, seen on B

    node_a.process.send_signal(signal.SIGKILL)  # the node dies mid-conversation
    node_a.process.wait()
    moved = await connect(node_b.ws("/api/nova-sonic/stream"))
    ready = await moved.initialize(sessionId=session_id)
    assert ready["resumed"] is True and ready["messageCount"] == 2
    await moved.send({"type": "text_message", "text": "still me"})
    transcript, before = await moved.until("transcription", within=20)
    assert transcript["text"] == "still me" and not before  # nothing replayed
    assert (await moved.final_reply())[0]["text"] == "still me"
