"""Leases a live worker keeps renewing, so a dead worker's work is taken over in seconds.

A job (or a webhook delivery) belongs to one worker while its row carries that worker's
``lease_token`` and a ``lease_expires_at`` in the future. Each worker process runs one
keeper thread that renews, every lease/6 seconds, everything the process holds with one
UPDATE per table. The lease can therefore be short (30 s by default) while a 30 s Segmind
call or a slow upload keeps its own: the lock renewal of BullMQ, whose 30 s lock is the
reference here. A worker that dies stops renewing; once the lease has run out, the keeper
of any live worker (and the beat's sweeper) re-publishes the work, and a worker's claim
takes it over. The broker's visibility timeout plays no part in that.

A worker starting on a host where its predecessor died need not wait for the lease: each
row names its holder (host, boot, PID namespace, PID and the process's start time), and a
holder on this very host, boot and PID namespace whose process is gone, or whose PID now
belongs to a younger process, is dead for certain. Anything less certain (another host,
another PID namespace, no /proc) waits for the lease.

Why by hand: Celery has no lease renewal (its only redelivery is the broker's visibility
timeout, 600 s here), and the locks of python-redis-lock or pottery live in Redis, whereas
the truth about a job is its PostgreSQL row, which a FLUSHALL must not hand to a second
worker while the first still calls Segmind.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from relightq.db import session_scope, utcnow
from relightq.metrics import LEASES_RECOVERED

log = logging.getLogger(__name__)

# Renewals per lease: five can fail in a row (a PostgreSQL restart, a long GC) before it runs out.
RENEWALS_PER_LEASE = 6
MAX_REPUBLISHED_PER_TICK = 1000


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, precisely enough to tell on the same host that it is dead."""

    host: str
    boot_id: str
    pid_namespace: str
    pid: int
    started: str  # the process's start time in clock ticks since boot (/proc/PID/stat)

    def __str__(self) -> str:
        return "|".join([self.host, self.boot_id, self.pid_namespace, str(self.pid), self.started])

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a row names, or None for an unreadable value."""
        parts = text.split("|")
        if len(parts) != 5 or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]), parts[4])

    @classmethod
    def this_process(cls) -> Holder:
        """This process, as a row names it."""
        pid = os.getpid()
        return cls(
            socket.gethostname()[:100],
            _read("/proc/sys/kernel/random/boot_id"),
            _pid_namespace(),
            pid,
            _start_ticks(pid),
        )

    def certainly_dead(self, me: Holder) -> bool:
        """True only when ``self`` ran on ``me``'s host, boot and PID namespace and its
        process is gone or its PID was reused; unknown parts never count as proof."""
        if not (me.boot_id and me.pid_namespace and self.started):
            return False
        if (self.host, self.boot_id, self.pid_namespace) != (
            me.host,
            me.boot_id,
            me.pid_namespace,
        ):
            return False
        if self.pid == me.pid and self.started == me.started:
            return False  # that is this process
        return _start_ticks(self.pid) != self.started


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """Field 22 of /proc/PID/stat, or "" if there is no such process (or no /proc)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return ""
    # The command name (field 2) may contain spaces and parentheses: split after its end.
    return stat.rsplit(")", 1)[-1].split()[19]


@dataclass(frozen=True)
class LeasedTable:
    """A table whose rows workers hold by lease: the columns the keeper reads and writes."""

    name: str
    model: Any  # a mapped class with id, status, lease_token, lease_expires_at, lease_holder
    held_status: str
    # Wake a worker for each of these rows once the session commits.
    publish: Callable[[Session, list[uuid.UUID]], None]


@dataclass
class Lease:
    """One row this process holds; ``lost`` once it can no longer be sure of that."""

    table: LeasedTable
    row_id: uuid.UUID
    token: uuid.UUID
    valid_until: float  # time.monotonic() by which the last renewal runs out
    taken: bool = False  # a renewal found the row held by someone else, or final

    @property
    def lost(self) -> bool:
        """True when another worker may hold the row now: never write its outcome then."""
        return self.taken or time.monotonic() >= self.valid_until


@dataclass
class LeaseKeeper:
    """Renews this process's leases and re-publishes the expired leases of dead workers."""

    lease_seconds: float
    tables: list[LeasedTable]
    holder: Holder = field(default_factory=Holder.this_process)
    # True when this process should re-publish expired leases now (one worker per
    # interval does it across the fleet); None: always.
    may_republish: Callable[[float], bool] | None = None
    draining: threading.Event = field(default_factory=threading.Event)
    _held: dict[uuid.UUID, Lease] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def interval(self) -> float:
        """Seconds between renewals."""
        return self.lease_seconds / RENEWALS_PER_LEASE

    def expires_at(self, now: datetime) -> datetime:
        """Where a lease taken or renewed at ``now`` runs out."""
        return now + timedelta(seconds=self.lease_seconds)

    @contextmanager
    def holding(self, table: LeasedTable, row_id: uuid.UUID, token: uuid.UUID) -> Iterator[Lease]:
        """Keep renewing the lease ``token`` on ``row_id`` until the block ends."""
        lease = self.hold(table, row_id, token)
        try:
            yield lease
        finally:
            self.drop(lease)

    def hold(self, table: LeasedTable, row_id: uuid.UUID, token: uuid.UUID) -> Lease:
        """Keep renewing the lease ``token`` on ``row_id`` until :meth:`drop` (work that
        outlives the thread which claimed it, such as a v2 request being polled)."""
        # Counted from before the claim's commit: the row's expiry is no earlier than this.
        lease = Lease(table, row_id, token, time.monotonic() + self.lease_seconds - 1)
        self.start()
        with self._lock:
            self._held[token] = lease
        return lease

    def drop(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (its row was written, handed back or taken over)."""
        with self._lock:
            self._held.pop(lease.token, None)

    def held(self) -> list[Lease]:
        """The leases this process holds now."""
        with self._lock:
            return list(self._held.values())

    def start(self) -> None:
        """Start the keeper thread (once)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="relightq-lease-keeper", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """End the keeper thread (tests, the demo's exit)."""
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """One renewal, then one look for expired leases; errors wait for the next tick
        (the thread must outlive any outage, or every lease it holds would run out)."""
        try:
            self.renew()
        except SQLAlchemyError as exc:
            # PostgreSQL unreachable: the leases run down; past their end they count as lost.
            log.warning("could not renew %d leases: %s", len(self.held()), type(exc).__name__)
        except Exception:
            log.exception("could not renew leases; the next tick retries")
        try:
            # Redis (which picks the worker whose turn it is) may be down too.
            if self.may_republish is None or self.may_republish(self.interval):
                self.republish_expired()
        except Exception as exc:
            log.warning("could not re-publish expired leases: %s", type(exc).__name__)

    def renew(self) -> int:
        """Push every held lease's end out by a full lease; returns how many are still ours."""
        leases = self.held()
        if not leases:
            return 0
        started = time.monotonic()
        kept: set[uuid.UUID] = set()
        with session_scope() as session:
            expires = self.expires_at(utcnow())
            for table in self.tables:
                tokens = [lease.token for lease in leases if lease.table is table]
                if not tokens:
                    continue
                model = table.model
                kept.update(
                    session.scalars(
                        update(model)
                        .where(model.lease_token.in_(tokens), model.status == table.held_status)
                        # updated_at stays: it tells when the row last changed, not renewed.
                        .values(lease_expires_at=expires, updated_at=model.updated_at)
                        .returning(model.lease_token)
                    )
                )
        for lease in leases:
            if lease.token in kept:
                lease.valid_until = started + self.lease_seconds - 1
            else:
                lease.taken = True
        return len(kept)

    def republish_expired(self) -> int:
        """Wake a worker for every row whose lease has run out (its holder died)."""
        with session_scope() as session:
            return republish_expired(session, self.tables)

    def reclaim_from_dead_predecessors(self) -> int:
        """Expire at once the leases of holders on this host that are certainly dead, and
        wake a worker for each; called when a worker starts."""
        count = 0
        with session_scope() as session:
            now = utcnow()
            for table in self.tables:
                model = table.model
                rows = session.execute(
                    select(model.id, model.lease_token, model.lease_holder).where(
                        model.status == table.held_status,
                        model.lease_expires_at >= now,
                        model.lease_holder.startswith(self.holder.host + "|", autoescape=True),
                    )
                ).all()
                dead = [
                    (row_id, token)
                    for row_id, token, text in rows
                    if (holder := Holder.parse(text)) and holder.certainly_dead(self.holder)
                ]
                for row_id, token in dead:
                    # Only while the dead holder's token is still there: a live worker may
                    # have taken the row over between the read and this write.
                    session.execute(
                        update(model)
                        .where(model.id == row_id, model.lease_token == token)
                        .values(lease_expires_at=now - timedelta(seconds=1))
                    )
                if dead:
                    table.publish(session, [row_id for row_id, _ in dead])
                    LEASES_RECOVERED.labels(table.name, "dead_holder").inc(len(dead))
                    count += len(dead)
        if count:
            log.warning("took over %d rows held by a dead worker on this host", count)
        return count

    def abandon(self, leases: list[Lease] | None = None) -> int:
        """Hand every held row (or just ``leases``) back at once: its lease ends now
        (a forced shutdown; v2 requests being polled, when a worker stops)."""
        leases = self.held() if leases is None else leases
        if not leases:
            return 0
        with session_scope() as session:
            now = utcnow()
            for table in self.tables:
                mine = [lease for lease in leases if lease.table is table]
                if not mine:
                    continue
                model = table.model
                ids = list(
                    session.scalars(
                        update(model)
                        .where(
                            model.lease_token.in_([lease.token for lease in mine]),
                            model.status == table.held_status,
                        )
                        .values(lease_expires_at=now - timedelta(seconds=1))
                        .returning(model.id)
                    )
                )
                if ids:
                    table.publish(session, ids)
                    LEASES_RECOVERED.labels(table.name, "handed_back").inc(len(ids))
        with self._lock:
            for lease in leases:
                lease.taken = True
                # Not renewed again: a renewal would push the ended lease out once more.
                self._held.pop(lease.token, None)
        log.warning("handed back %d held rows", len(leases))
        return len(leases)


def republish_expired(session: Session, tables: list[LeasedTable]) -> int:
    """Wake a worker, once ``session`` commits, for every row whose lease has run out."""
    now = utcnow()
    count = 0
    for table in tables:
        model = table.model
        ids = list(
            session.scalars(
                select(model.id)
                .where(model.status == table.held_status, model.lease_expires_at < now)
                .limit(MAX_REPUBLISHED_PER_TICK)
            )
        )
        if ids:
            table.publish(session, ids)
            LEASES_RECOVERED.labels(table.name, "expired").inc(len(ids))
            count += len(ids)
    if count:
        log.warning("re-published %d rows whose lease ran out (their worker died)", count)
    return count


def drain_then_exit(keeper: LeaseKeeper, grace_seconds: float) -> Callable[[], None]:
    """What the worker does on SIGTERM: the first stops new calls and starts the grace
    timer; the second (or the timer) hands back what is still held and exits at once."""

    def force_exit() -> None:
        with suppress(Exception):
            _bounded(keeper.abandon, seconds=10)
        logging.shutdown()
        os._exit(1)

    def on_signal() -> None:
        if keeper.draining.is_set():
            log.warning("second stop signal: handing back held work and exiting now")
            force_exit()
        keeper.draining.set()
        log.warning(
            "stopping: calls on the wire finish and are recorded, the rest goes back to the "
            "queue; exiting within %.0f s (a second SIGTERM exits now)",
            grace_seconds,
        )
        timer = threading.Timer(grace_seconds, force_exit)
        timer.daemon = True
        timer.start()

    return on_signal


def _bounded(work: Callable[[], object], seconds: float) -> None:
    """Run ``work`` in a thread and wait at most ``seconds`` (PostgreSQL may be down)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
