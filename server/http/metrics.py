"""Prometheus metrics: one `CollectorRegistry` per app, a middleware counting requests, GET /metrics.

Counted as they happen: HTTP requests by route, method and status; prompt and completion tokens;
time to first token, inter-token latency and end-to-end latency of generations (from the
request's `RequestContext`, observed when its response is done); model load time. Read from
each loaded engine's `EngineStats` at scrape time: queue depth, running batch size, sequences by
outcome, engine liveness, KV cache blocks used and in all, prefix-cache hit and miss tokens,
preemptions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import ModelRegistry
from server.http.context import RequestContext, current

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The app's metric families, all in `self.registry` (never the process-global default)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hearth_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "hearth_prompt_tokens", "Prompt tokens of answered requests", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "hearth_completion_tokens", "Completion tokens generated (all choices)", ["model"], registry=r
        )
        self.ttft = Histogram(
            "hearth_time_to_first_token_seconds",
            "From request arrival to its first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "hearth_inter_token_latency_seconds",
            "Between consecutive tokens of one choice",
            ["model"],
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "hearth_e2e_request_latency_seconds",
            "From request arrival to the end of its response, for requests that generated tokens",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_load = Gauge(
            "hearth_model_load_seconds", "Time the model took to load", ["model"], registry=r
        )

    def watch(self, models: ModelRegistry) -> Collector:
        """Also report the engines of `models` (read at each scrape); returns the collector."""
        collector = EngineCollector(models)
        self.registry.register(collector)
        return collector

    def observe(self, ctx: RequestContext, finished: float) -> None:
        """A finished request's generation timings and token counts (nothing if it generated nothing)."""
        if ctx.model is None or ctx.first_token is None:
            return
        model = ctx.model
        self.ttft.labels(model).observe(ctx.first_token - ctx.started)
        self.e2e.labels(model).observe(finished - ctx.started)
        itl = self.itl.labels(model)
        for gap in ctx.inter_token:
            itl.observe(gap)
        self.prompt_tokens.labels(model).inc(ctx.prompt_tokens)
        self.completion_tokens.labels(model).inc(sum(ctx.completion_tokens.values()))

    def exposition(self) -> bytes:
        """Every family in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """Gauges and counters read from each loaded engine's `EngineStats` when scraped."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily(
            "hearth_queue_depth", "Sequences waiting for a batch slot", labels=["model"]
        )
        running = GaugeMetricFamily(
            "hearth_running_sequences", "Sequences in the running batch", labels=["model"]
        )
        alive = GaugeMetricFamily(
            "hearth_engine_alive", "1 while the model's engine thread runs", labels=["model"]
        )
        outcomes = CounterMetricFamily(
            "hearth_sequences", "Engine sequences by outcome", labels=["model", "outcome"]
        )
        steps = CounterMetricFamily("hearth_engine_steps", "Engine iterations", labels=["model"])
        restarts = CounterMetricFamily(
            "hearth_engine_restarts", "Engine threads restarted after dying", labels=["model"]
        )
        available = GaugeMetricFamily(
            "hearth_model_available",
            "0 while a model cannot be served (load failed, engine failed too often, restarting)",
            labels=["model"],
        )
        memory = GaugeMetricFamily(
            "hearth_model_memory_bytes",
            "What a loaded model holds: weights as loaded (packed, quantized) and its whole KV cache",
            labels=["model"],
        )
        kv_used = GaugeMetricFamily(
            "hearth_kv_blocks_used", "KV cache blocks held by running sequences", labels=["model"]
        )
        kv_total = GaugeMetricFamily("hearth_kv_blocks_total", "KV cache blocks in all", labels=["model"])
        prefix = CounterMetricFamily(
            "hearth_prefix_cache_tokens",
            "Prompt tokens admitted from the prefix cache (hit) or computed (miss)",
            labels=["model", "result"],
        )
        preempted = CounterMetricFamily(
            "hearth_preemptions",
            "Sequences preempted (recomputed later) when the KV cache ran out",
            labels=["model"],
        )
        sizes = getattr(self.models, "sizes", None)
        for model_id, size in (sizes() if callable(sizes) else {}).items():
            memory.add_metric([model_id], size)
        recovery = getattr(self.models, "recovery", None)
        if recovery is not None:
            for cfg in self.models.models():
                restarts.add_metric([cfg.id], recovery.restarts(cfg.id))
                available.add_metric([cfg.id], 1.0 if recovery.state(cfg.id)["state"] == "ok" else 0.0)
        for model_id in self.models.loaded_ids():
            engine = self.models.peek_served(model_id)  # never loads, and a scrape is not a use
            if engine is None:  # unloaded meanwhile
                continue
            stats = engine.stats
            waiting.add_metric([model_id], stats.waiting)
            running.add_metric([model_id], stats.running)
            alive.add_metric([model_id], 1.0 if engine.alive else 0.0)
            for outcome in ("submitted", "finished", "aborted", "failed"):
                outcomes.add_metric([model_id, outcome], getattr(stats, outcome))
            steps.add_metric([model_id], stats.steps)
            if stats.kv_blocks_total:  # an embedding model has no KV cache
                kv_used.add_metric([model_id], stats.kv_blocks_used)
                kv_total.add_metric([model_id], stats.kv_blocks_total)
                prefix.add_metric([model_id, "hit"], stats.prefix_hit_tokens)
                prefix.add_metric([model_id, "miss"], stats.prefix_miss_tokens)
                preempted.add_metric([model_id], stats.preemptions)
        families = [waiting, running, alive, outcomes, steps, restarts, available, memory]
        return [*families, kv_used, kv_total, prefix, preempted]


def route_label(scope: Scope) -> str:
    """The route template a request matched (`/v1/models/{model_id:path}`), so labels stay few."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """Counts every HTTP response by route and status; then observes the request's generation timings."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.requests.labels(route_label(scope), scope["method"], str(status)).inc()
            ctx = current()
            if ctx is not None:
                self.metrics.observe(ctx, time.monotonic())
