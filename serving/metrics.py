"""Prometheus metrics for the serving app, exposed at GET /metrics.

    curl -s http://127.0.0.1:8000/metrics | grep '^lam_'

Each app gets its own CollectorRegistry, so several apps (tests) can live in one process.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/openapi.json")


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, backend=None):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lam_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("lam_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("lam_completion_tokens", "Completion tokens generated", registry=r)
        self.queue_depth = Gauge("lam_queue_depth", "Requests waiting for the batch worker", registry=r)
        self.active = Gauge("lam_active_sequences", "Sequences in the running batch", registry=r)
        self.prefix_hits = Gauge("lam_prefix_cache_hit_ratio", "Share of prompt tokens served from the prefix cache",
                                 registry=r)
        self.batch_size = Histogram("lam_batch_size", "Sequences per model forward pass", ["phase"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.latency = Histogram("lam_request_latency_seconds", "End-to-end generation latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        if backend is not None:
            # Read live at scrape time rather than updated on every step.
            self.queue_depth.set_function(lambda: getattr(backend, "queue_depth", 0))
            self.active.set_function(lambda: getattr(backend, "active_rows", 0))
            self.prefix_hits.set_function(lambda: getattr(backend, "prefix_cache_hit_ratio", 0.0))
            if hasattr(backend, "prefill_thread"):
                Gauge("lam_prefill_thread", "1 when prompts are prefilled in a thread beside the decode steps",
                      registry=r).set(int(bool(backend.prefill_thread)))
            if hasattr(backend, "replicas"):
                Gauge("lam_replicas", "Batches decoded side by side, one worker thread each",
                      registry=r).set(backend.replicas)
            if hasattr(backend, "packed"):
                Gauge("lam_packed_prefill", "1 when new prompts are packed into the decode steps' forwards",
                      registry=r).set(int(bool(backend.packed)))
            for key in getattr(backend, "stats", {}):  # worker totals: forward seconds and tokens by phase
                Gauge(f"lam_worker_{key}", f"Backend worker total: {key.replace('_', ' ')}", registry=r
                      ).set_function(lambda key=key: backend.stats[key])
            if hasattr(backend, "on_batch"):
                backend.on_batch = lambda rows, phase: self.batch_size.labels(phase).observe(rows)

    def observe_generation(self, route: str, started: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.latency.labels(route).observe(time.monotonic() - started)
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestCounterMiddleware:
    """Pure ASGI middleware counting responses by route/status (streaming-safe, unlike BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
