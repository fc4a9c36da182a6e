"""All configuration, read from RELIGHTQ_* environment variables and a .env file.

Every field's comment is its description in docs/reference/configuration.md, which
`python -m scripts.gen_reference` writes from this file.
"""

from __future__ import annotations

import ipaddress
import logging
from decimal import Decimal
from functools import lru_cache
from itertools import pairwise
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

SEGMIND_PUBLIC_URL = "https://api.segmind.com"


class Settings(BaseSettings):
    """Typed settings shared by the API, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="RELIGHTQ_", env_file=".env", extra="ignore")

    # PostgreSQL, the source of truth for every job, batch, key and schedule.
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/relightq"
    # Redis as Celery's broker; it carries only wake-ups (PostgreSQL holds the jobs).
    broker_url: str = "redis://127.0.0.1:6379/0"

    # The bucket for uploads (inputs/) and outputs (outputs/).
    s3_bucket: str = "relightq"
    # An S3-compatible store (SeaweedFS, MinIO, ...); unset: AWS S3.
    s3_endpoint_url: str | None = None
    # Presigned URLs are handed to users, so they may need a different host than the
    # one workers use inside a private network (e.g. http://s3:8333 vs localhost);
    # unset: RELIGHTQ_S3_ENDPOINT_URL.
    s3_public_endpoint_url: str | None = None
    # The S3 region used to sign requests.
    s3_region: str = "us-east-1"
    # S3 access key id; unset: boto3's credential chain (environment, profile, role).
    s3_access_key_id: str | None = None
    # S3 secret access key; unset: boto3's credential chain.
    s3_secret_access_key: SecretStr | None = None
    # A folder standing in for the bucket instead of S3 (the demo keeps results there).
    local_storage_dir: str | None = None
    # Lifetime of the presigned output URLs handed to users.
    presign_expires_seconds: int = 3600
    # Other buckets are read and written with relightq's credentials, so one tenant could
    # name another's: each tenant may use only the buckets an operator granted it
    # (`relightq buckets grant`). False: any bucket, for single-tenant deployments.
    require_bucket_grants: bool = True

    # The Segmind API key, sent only upstream; unset: relightq says loudly that it uses
    # the local simulator instead.
    segmind_api_key: SecretStr | None = None
    # The upstream's base URL.
    segmind_base_url: str = SEGMIND_PUBLIC_URL
    # Where the simulator listens when no Segmind key is configured.
    simulator_url: str = "http://127.0.0.1:8090"
    # Segmind bills per call in dollars-as-credits; the price used for a job's credits_used.
    segmind_credits_per_image: Decimal = Field(default=Decimal("0.037"), gt=0, decimal_places=6)
    # Which Segmind API jobs go through (docs/concepts/upstream-modes.md). "v2", the
    # default: Segmind's queue; the submit answers a request id at once, committed before
    # anything else, and workers poll it without holding a thread, so a worker killed
    # after the submit never makes the job pay again. "v1": one blocking ~30 s call per
    # job and thread, for upstreams that only speak v1.
    segmind_api_version: Literal["v1", "v2"] = "v2"
    # v2: the shortest wait between two polls of a request. A worker learns how long
    # requests take and polls each first at 80 % of that, then every twentieth of its age.
    segmind_poll_min_seconds: float = Field(default=0.05, gt=0)
    # v2: the longest wait between two polls of a request (Segmind's calls take ~30 s).
    segmind_poll_max_seconds: float = Field(default=30.0, gt=0)

    # Read timeout of one upstream call.
    segmind_timeout_seconds: float = 120.0
    # Celery's time limit per task (the threads pool does not enforce it; the upstream
    # timeout bounds each call). Ordered so the broker never redelivers a message whose
    # task still runs: slot wait + upstream timeout < task time limit < visibility timeout.
    task_time_limit_seconds: int = 240
    # Redis redelivers an unacknowledged message after this. Recovery does not wait for
    # it: a dead worker's jobs come back through their leases.
    broker_visibility_timeout_seconds: int = 600
    # A running job (or a webhook being sent) belongs to its worker for this long after
    # the last renewal; the worker renews it every sixth of it while it lives, so a 30 s
    # call keeps its lease and a killed worker's jobs are taken over within about
    # lease + lease/6 (35 s). Shorter leases cost more renewals and less tolerance of a
    # PostgreSQL outage (a worker that cannot renew past its lease stops writing).
    job_lease_seconds: float = Field(default=30.0, ge=6)
    # SIGTERM: calls on the wire finish and are recorded, other claimed jobs go back to the
    # queue at once; after this long (or on a second SIGTERM) the worker hands back what
    # it still holds and exits. Give the orchestrator's grace period 10 s more
    # (compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
    worker_shutdown_grace_seconds: float = Field(default=150.0, gt=0)

    # Upstream attempts a job gets for transient errors (5xx, timeouts, connection errors).
    max_attempts: int = 5
    # First delay of the exponential backoff (with full jitter) between attempts.
    retry_base_delay_seconds: float = 2.0
    # Longest delay of that backoff.
    retry_max_delay_seconds: float = 300.0

    # Largest request body; larger ones get 413. Zero or less would refuse every request
    # with a 413, so it is refused at start.
    max_request_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    # Largest uploaded subject image; larger ones get 413 (zero or less: refused at start).
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)

    # Threads per worker process (Celery's threads pool: jobs wait on Segmind).
    worker_concurrency: int = 16
    # Where a worker serves its own counters (upstream latency and calls, deliveries,
    # recovered leases); unset: not served.
    worker_metrics_port: int | None = None
    # "text" for people, "json" for log pipelines; both carry job, batch and tenant ids.
    log_format: str = Field(default="text", pattern="^(text|json)$")
    # The lowest level logged (DEBUG, INFO, WARNING, ...).
    log_level: str = "INFO"

    # A batch hands the broker at most this many of its items at a time, so a 100k-item
    # batch never buries single jobs or later batches; unset means twice
    # RELIGHTQ_MAX_CONCURRENT_CALLS, enough to keep every upstream slot busy.
    batch_window: int | None = Field(default=None, ge=1)
    # More items in one batch get 413 too_many_items.
    max_batch_items: int = Field(default=1_000_000, ge=1)
    # Cap on a CSV/JSONL upload to POST /v1/batches (413). Uploads are streamed to a
    # temporary file, never held whole in memory.
    max_batch_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    # How many bad rows a rejected batch lists (the count is always exact).
    max_reported_row_errors: int = Field(default=1000, ge=1)

    # Requests per API key across every API process, in the `limits` notation
    # ("1200/minute"); empty: no limit. One rate: a list such as "20/second;1000/hour"
    # is refused at start, since only its first rate would be applied.
    rate_limit: str = "1200/minute"

    # How long the Segmind-compatible endpoint waits for a job before answering 504
    # (the job goes on; Segmind itself answers within ~30 s).
    compat_wait_seconds: float = Field(default=300.0, gt=0)

    # How often the scheduler looks for due schedules (a run fires within this of its time).
    schedule_tick_seconds: float = Field(default=15.0, gt=0)

    # Idempotency-Key answers are replayed for at least this long (Stripe keeps 24 h).
    idempotency_ttl_hours: float = Field(default=24.0, ge=24.0)

    # Outbound webhooks: the delays before each retry (a JSON list), then the delivery
    # fails. The default spreads 10 tries over ~3.3 days, like Svix's schedule for
    # Standard Webhooks.
    webhook_retry_schedule_seconds: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000, 86400, 86400], min_length=1
    )
    # Each delay is drawn from [d * (1 - j), d * (1 + j)] so endpoints are not stampeded.
    webhook_retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    # Timeout of one webhook delivery try.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Hosts or CIDRs that callbacks may reach although private, loopback or link-local
    # (comma-separated, e.g. "10.0.0.0/8,hooks.internal"); empty: public addresses only.
    outbound_allow: str = ""

    # Where the fleet's shared state lives (docs/reference/guarantees.md, guarantee 4);
    # unset: the broker, when that is Redis.
    redis_url: str | None = None
    # Fleet-wide cap on Segmind calls in flight, across every worker on every host.
    max_concurrent_calls: int = Field(default=5, ge=1)
    # Fleet-wide cap on Segmind calls started per minute; Segmind plans allow 5 (free)
    # or 50 (pro).
    max_calls_per_minute: int = Field(default=5, ge=1)
    # Pause the fleet when the balance falls below this, before it reaches zero
    # (docs/reference/guarantees.md, guarantee 3).
    credit_reserve: Decimal = Field(default=Decimal(0), ge=0, decimal_places=6)
    # Warn (a credits.low webhook event and the relightq_credits_low metric) once each time
    # the balance Segmind reports falls below this; empty or "none": never
    # (docs/concepts/credits.md).
    credit_warn_below: Decimal | None = Field(default=Decimal(10), ge=0, decimal_places=6)
    # While paused, the free credits probe first runs after this long ...
    probe_interval_seconds: float = 30.0
    # ... and its interval doubles up to this.
    probe_max_interval_seconds: float = 600.0
    # How long a claimed job waits for a free upstream slot before going back to the queue.
    slot_wait_seconds: float = 60.0
    # How often the sweeper runs; it also re-publishes expired leases (as every worker's
    # lease keeper does).
    sweep_interval_seconds: float = Field(default=10.0, gt=0)
    # A queued job untouched this long, with nothing left in the broker, lost its wake-up
    # (Redis flushed or restarted without its AOF). A false alarm only sends a duplicate
    # wake-up, which the claim ignores.
    sweep_grace_seconds: float = Field(default=15.0, ge=0)

    @property
    def fleet_redis_url(self) -> str | None:
        """Where the fleet's shared state lives; None means in-process (the demo)."""
        if self.redis_url:
            return self.redis_url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else None

    @model_validator(mode="after")
    def _timeouts_are_ordered(self) -> Settings:
        # A task may wait for a fleet slot and then make its call; only after both may the
        # broker redeliver its message (a lease, renewed meanwhile, guards the job itself).
        chain = [
            (
                "RELIGHTQ_SEGMIND_TIMEOUT_SECONDS + RELIGHTQ_SLOT_WAIT_SECONDS",
                self.segmind_timeout_seconds + self.slot_wait_seconds,
            ),
            ("RELIGHTQ_TASK_TIME_LIMIT_SECONDS", self.task_time_limit_seconds),
            ("RELIGHTQ_BROKER_VISIBILITY_TIMEOUT_SECONDS", self.broker_visibility_timeout_seconds),
        ]
        for (a_name, a), (b_name, b) in pairwise(chain):
            if not a < b:
                raise ValueError(f"{a_name} ({a}) must be less than {b_name} ({b})")
        if not self.segmind_timeout_seconds < self.worker_shutdown_grace_seconds:
            raise ValueError(
                f"RELIGHTQ_SEGMIND_TIMEOUT_SECONDS ({self.segmind_timeout_seconds}) must be less "
                f"than RELIGHTQ_WORKER_SHUTDOWN_GRACE_SECONDS "
                f"({self.worker_shutdown_grace_seconds}), so a stopping worker lets the calls "
                "on the wire finish"
            )
        return self

    @field_validator("credit_warn_below", mode="before")
    @classmethod
    def _empty_means_never(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        if value:
            from limits import parse_many

            try:
                rates = parse_many(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a rate such as 1200/minute") from exc
            if len(rates) > 1:
                raise ValueError(
                    f"{value!r} lists {len(rates)} rates; give one, such as 1200/minute "
                    "(only the first of a list would be applied)"
                )
        return value

    @field_validator("outbound_allow")
    @classmethod
    def _cidrs_parse(cls, value: str) -> str:
        # A host name has no "/": an entry with one is a CIDR, and a typo in it must not
        # quietly become a host name that matches nothing.
        for entry in (part.strip() for part in value.split(",")):
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{entry!r} is not a CIDR such as 10.0.0.0/8") from exc
        return value

    @property
    def batch_window_size(self) -> int:
        """Items of one batch the broker may hold or run at once."""
        return self.batch_window or 2 * self.max_concurrent_calls

    @property
    def uses_simulator(self) -> bool:
        """True when no Segmind key is set, so calls go to the local simulator."""
        return self.segmind_api_key is None or not self.segmind_api_key.get_secret_value()

    @property
    def effective_segmind_url(self) -> str:
        """The upstream base URL actually called."""
        return self.simulator_url if self.uses_simulator else self.segmind_base_url

    @property
    def effective_segmind_key(self) -> str:
        """The key sent upstream; the simulator accepts any non-empty key."""
        if self.uses_simulator:
            # Not a word: the client redacts its key from upstream text, and "simulator"
            # would blank the word out of the simulator's own messages.
            return "simulator-placeholder-key"
        assert self.segmind_api_key is not None
        return self.segmind_api_key.get_secret_value()

    def warn_if_simulated(self) -> None:
        """Say loudly that no real Segmind key is configured (docs/reference/configuration.md)."""
        if self.uses_simulator:
            log.warning(
                "RELIGHTQ_SEGMIND_API_KEY is not set: relightq is using the local SIMULATOR "
                "at %s, not Segmind. Images are NOT relit by IC-Light.",
                self.simulator_url,
            )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
