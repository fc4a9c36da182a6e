"""Prometheus metrics: what each process counts, and the fleet's state read at scrape time.

Counters and the latency histogram live in the process that makes the call (a worker
serves them on RELIGHTQ_WORKER_METRICS_PORT). Fleet-wide state - jobs by status, credits,
throttle, queue depth, deliveries by status - is read from PostgreSQL and Redis when the
API's /metrics is scraped, so it is the same whichever replica answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

log = logging.getLogger(__name__)

UPSTREAM_LATENCY = Histogram(
    "relightq_upstream_call_seconds",
    "Duration of calls to Segmind (or the simulator), by outcome",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120),
)
UPSTREAM_CALLS = Counter(
    "relightq_upstream_calls_total",
    "Calls to Segmind by HTTP status (or timeout / connection_error)",
    ["status"],
)
WEBHOOK_DELIVERIES = Counter(
    "relightq_webhook_delivery_attempts_total",
    "Webhook delivery tries by result (delivered, retry, failed)",
    ["result"],
)

LEASES_RECOVERED = Counter(
    "relightq_leases_recovered_total",
    "Jobs and webhook deliveries this process sent back to the queue from a worker that "
    "died (lease expired), died on this host (dead_holder) or stopped (handed_back)",
    ["table", "how"],
)

UPSTREAM_REQUESTS_POLLED = Gauge(
    "relightq_upstream_requests_polled",
    "Segmind v2 requests this worker process is polling (submitted, not yet collected)",
)
UPSTREAM_RECEIPT_SECONDS = Histogram(
    "relightq_upstream_receipt_seconds",
    "Segmind v2: from sending a submit to its request id committed in PostgreSQL (bounds "
    "the only window in which a killed worker can still make a job pay twice)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
CREDITS_SPENT = Counter(
    "relightq_credits_spent_total",
    "Credits paid to Segmind for the images of succeeded jobs (exact to 6 places)",
)
CREDITS_SAVED = Counter(
    "relightq_credits_saved_total",
    "Credits not spent because a job copied an identical earlier picture (result reuse)",
)
JOBS_REUSED = Counter(
    "relightq_jobs_reused_total",
    "Jobs that succeeded by copying an identical earlier picture instead of calling Segmind",
)
CREDITS_LOW_WARNINGS = Counter(
    "relightq_credits_low_warnings_total",
    "Times the reported balance fell below RELIGHTQ_CREDIT_WARN_BELOW (one credits.low event each)",
)
UPSTREAM_POLLS = Counter(
    "relightq_upstream_polls_total",
    "Segmind v2 status polls by what they found (QUEUED, PROCESSING, COMPLETED, FAILED, "
    "lost, error)",
    ["state"],
)


def observe_upstream(seconds: float, status: int | None, error_code: str | None) -> None:
    """Count one upstream call."""
    label = str(status) if status is not None else (error_code or "error")
    UPSTREAM_CALLS.labels(label).inc()
    UPSTREAM_LATENCY.labels("ok" if status == 200 else "error").observe(seconds)


class FleetStateCollector(Collector):
    """Reads the shared state at scrape time (a failed read drops only that family)."""

    def collect(self) -> Iterator[Metric]:
        yield from self._from_database()
        yield from self._from_redis()

    def _from_database(self) -> Iterator[Metric]:
        from relightq.db import session_scope
        from relightq.jobs.models import Job, JobStatus, UpstreamState
        from relightq.webhooks.models import DeliveryStatus, WebhookDelivery

        try:
            with session_scope() as session:
                jobs: dict[str, int] = {
                    str(status): count
                    for status, count in session.execute(
                        select(Job.status, func.count()).group_by(Job.status)
                    )
                }
                deliveries: dict[str, int] = {
                    str(status): count
                    for status, count in session.execute(
                        select(WebhookDelivery.status, func.count()).group_by(
                            WebhookDelivery.status
                        )
                    )
                }
                upstream = session.execute(
                    select(UpstreamState.remaining_credits, UpstreamState.credits_low_since).where(
                        UpstreamState.id == 1
                    )
                ).one_or_none()
        except Exception:
            log.warning("metrics: PostgreSQL unreadable", exc_info=True)
            return
        by_status = GaugeMetricFamily("relightq_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            by_status.add_metric([status.value], jobs.get(status.value, 0))
        yield by_status
        hooks = GaugeMetricFamily(
            "relightq_webhook_deliveries", "Webhook deliveries by status", labels=["status"]
        )
        for delivery_status in DeliveryStatus:
            hooks.add_metric([delivery_status.value], deliveries.get(delivery_status.value, 0))
        yield hooks
        credits, low_since = upstream if upstream is not None else (None, None)
        if credits is not None:
            yield GaugeMetricFamily(
                "relightq_credits_remaining", "Segmind credits last reported", value=float(credits)
            )
        yield GaugeMetricFamily(
            "relightq_credits_low",
            "1 while the last reported balance is below RELIGHTQ_CREDIT_WARN_BELOW",
            value=1.0 if low_since is not None else 0.0,
        )

    def _from_redis(self) -> Iterator[Metric]:
        from relightq.broker import Queue, broker_backlog
        from relightq.settings import get_settings
        from relightq.throttle.service import get_fleet

        try:
            state = get_fleet().state()
            settings = get_settings()
            backlog = {queue: broker_backlog(settings, queue) for queue in Queue}
        except Exception:
            log.warning("metrics: Redis unreadable", exc_info=True)
            return
        yield GaugeMetricFamily(
            "relightq_throttle_paused", "1 while the fleet is paused", value=int(state.paused)
        )
        yield GaugeMetricFamily(
            "relightq_upstream_calls_in_flight", "Segmind calls in flight", value=state.in_flight
        )
        depth = GaugeMetricFamily(
            "relightq_queue_depth", "Messages waiting in the broker", labels=["queue"]
        )
        for queue, count in backlog.items():
            depth.add_metric([queue.value], count)
        yield depth
