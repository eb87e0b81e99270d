"""Prometheus metrics in a registry of their own (not the process-wide default one).

Series (all prefixed ``beautyai_``):
  http_requests_total{route,method,status}           counter, every request; route is the URL pattern
  http_request_duration_seconds{route,method}         histogram
  generated_tokens_total{model}                       counter, fed by record_generation()
  time_to_first_token_seconds{model}                  histogram, fed by record_generation()
  model_active_requests{model}, model_queue_depth{model}, model_memory_bytes{model}
                                                      gauges, read from the EngineManager at scrape time
  models_loaded                                       gauge, at scrape time
  background_rows_dropped_total                       counter, log records and request metrics the
                                                      background writer had to drop

A caller with a key but without the global model_read permission gets only the series labelled
with models it may read.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

registry = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("beautyai_http_requests", "HTTP requests by route pattern, method and status.",
                   ["route", "method", "status"], registry=registry)
LATENCY = Histogram("beautyai_http_request_duration_seconds", "Time to answer a request, until the response "
                    "object exists (for a stream: until its first byte is ready).", ["route", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                    registry=registry)
TOKENS = Counter("beautyai_generated_tokens", "Tokens generated, by model.", ["model"], registry=registry)
TTFT = Histogram("beautyai_time_to_first_token_seconds", "Time from the request to the first generated token.",
                 ["model"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry)


def record_request(*, route: str, method: str, status: int, duration_s: float) -> None:
    REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    LATENCY.labels(route=route, method=method).observe(duration_s)


def record_generation(model: str, tokens: int, ttft_ms: float | None) -> None:
    """Called by the chat layer once per finished generation (streamed or not)."""
    TOKENS.labels(model=model).inc(max(0, tokens))
    if ttft_ms is not None and ttft_ms >= 0:
        TTFT.labels(model=model).observe(ttft_ms / 1000)


class RuntimeCollector:
    """Reads the loaded models at scrape time, so the gauges can never go stale."""

    def collect(self):
        from models_app import selectors
        from system_app.logging import writer

        runners = selectors.runners()
        active = GaugeMetricFamily("beautyai_model_active_requests", "Generations running now, by model.",
                                   labels=["model"])
        queued = GaugeMetricFamily("beautyai_model_queue_depth", "Generations waiting for a slot, by model.",
                                   labels=["model"])
        memory = GaugeMetricFamily("beautyai_model_memory_bytes", "Runner RAM (RSS) plus GPU memory, by model.",
                                   labels=["model"])
        for info in runners:
            active.add_metric([info.name], info.active_requests)
            queued.add_metric([info.name], info.queue_depth)
            memory.add_metric([info.name], (info.memory_usage_mb or 0.0) * 1024 * 1024)
        yield active
        yield queued
        yield memory
        yield GaugeMetricFamily("beautyai_models_loaded", "Models loaded and ready.",
                                value=sum(1 for info in runners if info.status == "loaded"))
        yield CounterMetricFamily("beautyai_background_rows_dropped", "Log records and request metrics dropped "
                                  "by the background writer (queue full or database failing).", value=writer.dropped)

    def describe(self):
        # Describing by collecting would measure every runner at registration time.
        return []


registry.register(RuntimeCollector())


class _ReadableOnly:
    """The registry's families without the samples labelled with a model outside ``readable``."""

    def __init__(self, readable: frozenset[str]):
        self.readable = readable

    def collect(self):
        for family in registry.collect():
            # registry.collect() builds new families on every call, so trimming them in place is safe.
            family.samples = [sample for sample in family.samples
                              if "model" not in sample.labels or sample.labels["model"] in self.readable]
            yield family


def exposition(*, readable: frozenset[str] | None = None) -> bytes:
    """The text format; with ``readable``, series of other models are left out (their names with them)."""
    return generate_latest(registry if readable is None else _ReadableOnly(readable))
