"""OpenTelemetry tracing: a real tracer provider, so spans get trace ids
that travel across services in the W3C ``traceparent`` header.

Export is off unless asked for: ``OVERTURE_OTEL_EXPORTER=console`` prints
spans, ``otlp`` sends them to the collector named by the standard
``OTEL_EXPORTER_OTLP_*`` variables (needs ``opentelemetry-exporter-otlp``).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = ["configure_tracing"]

_configured = False


def configure_tracing(*, service: str, exporter: str = "none") -> None:
    """Install the tracer provider for this process. Idempotent."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"overture-{service}"}))
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found]
        except ImportError as error:  # pragma: no cover - depends on the deployment
            raise RuntimeError("OVERTURE_OTEL_EXPORTER=otlp needs opentelemetry-exporter-otlp installed") from error
        span_exporter = OTLPSpanExporter()
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True
