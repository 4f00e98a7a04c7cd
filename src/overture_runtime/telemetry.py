"""OpenTelemetry tracing: a real tracer provider, so spans get trace ids
that travel across services in the W3C ``traceparent`` header.

Export is off unless asked for: ``OVERTURE_OTEL_EXPORTER=console`` prints
spans, ``otlp`` sends them to the collector named by the standard
``OTEL_EXPORTER_OTLP_*`` variables (needs ``opentelemetry-exporter-otlp``).

With export off, a trace this process starts is not recorded: its span still
has a trace id (for the logs) that travels on, marked not sampled, but it
keeps no attributes or events that nothing would read (recording them was
7% of ingest's CPU per small RPC). A span whose caller sampled its trace is
recorded, and passes the caller's decision on, as with export on.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

__all__ = ["configure_tracing", "tracer_provider"]

_configured = False


def configure_tracing(*, service: str, exporter: str = "none") -> None:
    """Install the tracer provider for this process. Idempotent."""
    global _configured
    if _configured:
        return
    trace.set_tracer_provider(tracer_provider(service=service, exporter=exporter))
    _configured = True


def tracer_provider(*, service: str, exporter: str = "none") -> TracerProvider:
    """The tracer provider of a service exporting to *exporter* (``none``,
    ``console`` or ``otlp``)."""
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found]
        except ImportError as error:  # pragma: no cover - depends on the deployment
            raise RuntimeError("OVERTURE_OTEL_EXPORTER=otlp needs opentelemetry-exporter-otlp installed") from error
        span_exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": f"overture-{service}"}),
                              sampler=ParentBased(root=ALWAYS_ON if span_exporter is not None else ALWAYS_OFF))
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider
