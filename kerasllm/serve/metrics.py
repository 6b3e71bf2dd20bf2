"""`GET /metrics`: the server's figures in Prometheus' text format (`prometheus-client`), as vLLM and llama.cpp export
theirs.

- `kerasllm_requests_total{path, status}`: HTTP requests answered, by path and status code;
- `kerasllm_prompt_tokens_total{model}`, `kerasllm_generation_tokens_total{model}`: tokens read and written;
- `kerasllm_time_to_first_token_seconds{model}`, `kerasllm_inter_token_latency_seconds{model}`,
  `kerasllm_queue_time_seconds{model}` (from submission to a slot), `kerasllm_request_seconds{model}`: histograms;
- `kerasllm_busy_slots{model}`, `kerasllm_queue_length{model}`, `kerasllm_slots{model}`: gauges read when scraped.

Each app has its own registry (a second server in one process, as in the tests, counts apart).
"""

from __future__ import annotations

import time

# Lazy imports: prometheus_client is imported when the app is made (`kerasllm serve`), not by `kerasllm --help`.

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The figures of one app, and the hooks that feed them."""

    def __init__(self, models: list):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("kerasllm_requests", "HTTP requests answered", ["path", "status"], registry=registry)
        self.prompt_tokens = Counter("kerasllm_prompt_tokens", "prompt tokens read", ["model"], registry=registry)
        self.generation_tokens = Counter("kerasllm_generation_tokens", "tokens generated", ["model"], registry=registry)
        histogram = lambda name, text: Histogram(name, text, ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = histogram("kerasllm_time_to_first_token_seconds", "from submission to the first token")
        self.inter_token = histogram("kerasllm_inter_token_latency_seconds", "between two tokens of one request")
        self.queue_time = histogram("kerasllm_queue_time_seconds", "from submission to a slot")
        self.request_time = histogram("kerasllm_request_seconds", "from submission to the last token")
        for name, text, read in (("kerasllm_busy_slots", "slots decoding now", lambda served: served.engine.busy),
                                 ("kerasllm_queue_length", "requests waiting for a slot", lambda served: served.engine.waiting.qsize()),
                                 ("kerasllm_slots", "slots (--max-batch)", lambda served: served.engine.max_batch)):
            gauge = Gauge(name, text, ["model"], registry=registry)
            for served in models:
                gauge.labels(served.name).set_function(lambda read=read, served=served: read(served))

    def watch(self, served, request) -> "Watch":
        return Watch(self, served.name, request)

    def answered(self, path: str, status: int) -> None:
        self.requests.labels(path, str(status)).inc()

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Watch:
    """One request's timings, fed from its events (on the event loop's thread)."""

    def __init__(self, metrics: Metrics, model: str, request):
        self.metrics, self.model, self.request = metrics, model, request
        self.submitted = time.perf_counter()
        self.last: float | None = None

    def text(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.first_token.labels(self.model).observe(now - self.submitted)
            joined = getattr(self.request, "joined", None)
            if joined is not None:
                self.metrics.queue_time.labels(self.model).observe(max(joined - self.submitted, 0.0))
        else:
            self.metrics.inter_token.labels(self.model).observe(now - self.last)
        self.last = now

    def done(self, usage: dict) -> None:
        self.metrics.request_time.labels(self.model).observe(time.perf_counter() - self.submitted)
        self.metrics.prompt_tokens.labels(self.model).inc(usage.get("prompt_tokens", 0))
        self.metrics.generation_tokens.labels(self.model).inc(usage.get("completion_tokens", 0))
