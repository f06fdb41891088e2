"""OpenTelemetry traces: one span per turn, from the user's final transcript to
the end of the reply, with the stage timings as attributes.

The code traces through the OpenTelemetry API, which does nothing until a
tracer provider is set. ``configure`` sets one, exporting over OTLP/HTTP, when
an endpoint is given the standard way (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and the ``otel`` extra is installed.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from sonicgate.events import EngineEvent, Error, Interrupted, Metrics, TurnEnded

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

tracer = trace.get_tracer("sonicgate")


def configure() -> bool:
    """Export spans if an OTLP endpoint is configured; True when traces go out."""
    endpoint = next((os.environ[name] for name in ENDPOINT_VARIABLES if name in os.environ), None)
    if endpoint is None:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "an OTLP endpoint is set but the OpenTelemetry SDK is missing: "
            "pip install 'sonicgate[otel]'; no traces will be sent"
        )
        return False
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "sonicgate"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("sending traces to %s", endpoint)
    return True


class TurnTrace:
    """One session's turns as spans: each opens when a user turn is complete (final
    transcript or typed text) and closes when its reply ends."""

    def __init__(self, session_id: str, engine: str) -> None:
        self._attributes: dict[str, AttributeValue] = {
            "sonicgate.session_id": session_id,
            "sonicgate.engine": engine,
        }
        self._span: trace.Span | None = None

    def start(self, turn: int, trigger: str) -> None:
        self.close()  # a turn that got no reply still ends here
        attributes: dict[str, AttributeValue] = {
            **self._attributes,
            "sonicgate.turn": turn,
            "sonicgate.trigger": trigger,
        }
        self._span = tracer.start_span("turn", attributes=attributes)

    def follow(self, event: EngineEvent) -> None:
        if self._span is None:
            return
        match event:
            case Metrics(stages=stages):
                for stage, seconds in stages.items():
                    self._span.set_attribute(f"sonicgate.stage.{stage}_s", seconds)
            case Interrupted():
                self._span.set_attribute("sonicgate.interrupted", True)
            case Error(code=code, message=message):
                self._span.set_status(trace.StatusCode.ERROR, f"{code}: {message}")
            case TurnEnded():
                self.close()

    def close(self) -> None:
        if self._span is not None:
            self._span.end()
            self._span = None
