"""OpenTelemetry: a span per turn, and OTLP export when an endpoint is configured."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import Connect, ServerFactory
from tests.scripted_engine import ScriptedEngine


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The process-wide tracer provider (it can be set once), keeping spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def test_each_turn_is_a_span_with_its_session(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    spans: InMemorySpanExporter,
) -> None:
    server = await make_server({"scripted": scripted})
    client = await connect(server.ws())
    session_id = (await client.initialize())["sessionId"]
    await client.complete_turn(bytes(16_000))
    await client.until("audio_response")
    await client.send({"type": "text_message", "text": "and now in writing"})
    await client.send({"type": "end_conversation"})
    await client.until("conversation_ended")

    turns = [
        span.attributes
        for span in spans.get_finished_spans()
        if span.name == "turn"
        and span.attributes
        and span.attributes.get("sonicgate.session_id") == session_id
    ]
    assert [t["sonicgate.trigger"] for t in turns] == ["explicit_end", "text_message"]
    assert turns[0]["sonicgate.turn"] == 1 and turns[0]["sonicgate.engine"] == "scripted"


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP trace collector: keeps what it is sent."""

    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.received.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_spans_go_to_the_configured_otlp_endpoint(collector: str) -> None:
    # A process of its own: the global tracer provider can be set only once per process.
    script = (
        "from opentelemetry import trace\n"
        "from sonicgate import tracing\n"
        "assert tracing.configure()\n"
        "turns = tracing.TurnTrace('s-otlp', 'local')\n"
        "turns.start(1, 'silence')\n"
        "turns.close()\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": collector}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    spans = [
        span
        for request in Collector.received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [span.name for span in spans] == ["turn"]
    attributes = {a.key: a.value for a in spans[0].attributes}
    assert attributes["sonicgate.session_id"].string_value == "s-otlp"
    assert attributes["sonicgate.trigger"].string_value == "silence"


def test_without_an_endpoint_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from sonicgate import tracing

    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure() is False
