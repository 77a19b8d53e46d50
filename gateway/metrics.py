"""Prometheus metrics of the gate, served at ``/metrics``.

Each gate owns its registry (several gates in one process — tests, embedding apps — never clash).
With several uvicorn workers each worker answers for itself; scrape each worker, or run one
worker per replica behind the load balancer (the usual Kubernetes shape).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from consentry.policies.decision import Decision

CONTENT_TYPE = CONTENT_TYPE_LATEST

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class GateMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "consentry_generation_requests",
            "Generation requests by decision (released / refused) and code.",
            ["decision", "code"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "consentry_stage_seconds",
            "Time per stage of the generate flow.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "consentry_generation_seconds",
            "Whole generation requests, admitted to answered.",
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "consentry_queue_depth",
            "Generation requests admitted and not finished (running + waiting).",
            registry=r,
        )
        self.upstream_errors = Counter(
            "consentry_upstream_errors", "Failures of the upstream generator, by code.", ["code"], registry=r
        )
        self.audit_append_seconds = Histogram(
            "consentry_audit_append_seconds",
            "Time to append one audit event (with its rows).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )

    def decided(self, decision: Decision, code: str | None = None) -> None:
        """Count one finished generation request and time each stage it ran."""
        final = code or decision.code
        self.requests.labels("released" if decision.allowed and code is None else "refused", final).inc()
        for name, verdict in decision.verdicts.items():
            self.stage_seconds.labels(name).observe(verdict.elapsed_ms / 1000.0)
            if verdict.fault and verdict.code.startswith("upstream."):
                self.upstream_errors.labels(verdict.code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
