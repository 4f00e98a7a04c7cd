"""Tracing: spans always carry trace ids; only a trace someone exports is recorded."""

from __future__ import annotations

import gc

from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from overture_runtime.server import GC_YOUNG_THRESHOLD, settle_heap
from overture_runtime.telemetry import tracer_provider

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NOT_SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


def _span(exporter: str, traceparent: str | None = None):  # type: ignore[no-untyped-def]
    tracer = tracer_provider(service="test", exporter=exporter).get_tracer("test")
    parent = propagate.extract({"traceparent": traceparent} if traceparent else {})
    return tracer.start_span("/overture.test/Call", context=parent, kind=SpanKind.SERVER)


def test_without_export_a_trace_started_here_has_an_id_but_is_not_recorded() -> None:
    span = _span("none")
    context = span.get_span_context()
    assert context.is_valid and context.trace_id != 0
    assert not span.is_recording()
    assert not context.trace_flags.sampled


def test_without_export_a_callers_sampled_trace_is_recorded_and_continued() -> None:
    span = _span("none", SAMPLED)
    assert span.is_recording()
    assert format(span.get_span_context().trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.get_span_context().trace_flags.sampled
    unsampled = _span("none", NOT_SAMPLED)
    assert not unsampled.is_recording()
    assert format(unsampled.get_span_context().trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_with_export_every_trace_started_here_is_recorded() -> None:
    span = _span("console")
    assert span.is_recording() and span.get_span_context().trace_flags.sampled


def test_settle_heap_freezes_what_start_up_allocated() -> None:
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
