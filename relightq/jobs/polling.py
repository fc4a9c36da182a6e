"""One scheduler per worker process for Segmind v2 requests in flight.

A v2 request waits in Segmind's queue for ~30 s; nothing here waits with it. Each request
is an entry in a heap ordered by when it is next due; one thread sleeps until the
earliest and hands due entries to a small pool that runs one poll each. Hundreds of
requests in flight cost a heap entry and a renewed lease apiece, not a thread.

Why not a Celery task per poll: a poll must be made by the process that holds the job's
lease (the keeper renews it with the others), and a task could land on any worker; a
countdown task also sits in Redis unacknowledged, where a restart would redeliver it.
The stdlib's ``sched`` module runs its actions on the calling thread, one at a time, so a
slow download would delay every other poll: hence a heap and a pool.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from relightq.leases import Lease
from relightq.metrics import UPSTREAM_REQUESTS_POLLED

log = logging.getLogger(__name__)

# A step polls once and says when to come back (seconds), or None when it is done.
Step = Callable[[], float | None]
RETRY_CRASHED_STEP_SECONDS = 5.0


@dataclass
class Poller:
    """Runs each tracked entry's step when due, on a pool of ``threads``."""

    threads: int = 8
    _heap: list[tuple[float, int, Lease, Step]] = field(default_factory=list)
    _tracked: dict[int, Lease] = field(default_factory=dict)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _wake: threading.Condition = field(default_factory=threading.Condition)
    _pool: ThreadPoolExecutor | None = None
    _thread: threading.Thread | None = None

    def track(self, lease: Lease, step: Step, delay: float) -> None:
        """Run ``step`` after ``delay`` seconds, and again whenever it asks, while the
        process holds ``lease``."""
        with self._wake:
            self._start()
            entry = next(self._order)
            self._tracked[entry] = lease
            UPSTREAM_REQUESTS_POLLED.set(len(self._tracked))
            heapq.heappush(self._heap, (time.monotonic() + delay, entry, lease, step))
            self._wake.notify()

    def leases(self) -> list[Lease]:
        """The leases of every request being polled (handed back when the worker stops)."""
        with self._wake:
            return list(self._tracked.values())

    def __len__(self) -> int:
        with self._wake:
            return len(self._tracked)

    def poll_all_now(self) -> None:
        """Make every entry due at once (a stopping worker hands its requests back)."""
        with self._wake:
            self._heap = [(0.0, entry, lease, step) for _, entry, lease, step in self._heap]
            heapq.heapify(self._heap)
            self._wake.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="relightq-poll")
            self._thread = threading.Thread(target=self._run, name="relightq-poller", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                _, entry, lease, step = heapq.heappop(self._heap)
            assert self._pool is not None
            self._pool.submit(self._step, entry, lease, step)

    def _step(self, entry: int, lease: Lease, step: Step) -> None:
        try:
            delay = step()
        except Exception:
            # The lease is still renewed; try again rather than forget a paid request.
            log.exception("a v2 poll failed unexpectedly; polling again")
            delay = RETRY_CRASHED_STEP_SECONDS
        with self._wake:
            if delay is None:
                self._tracked.pop(entry, None)
                UPSTREAM_REQUESTS_POLLED.set(len(self._tracked))
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, entry, lease, step))
            self._wake.notify()


@dataclass
class PollSchedule:
    """When to poll a request next, learning how long this upstream's requests take.

    Polling often wastes requests; polling rarely holds a finished request's fleet slot
    (and its job) idle until the next look. So until the first request has been seen
    done, the interval is a fifth of the request's age (noticed within ~20 %); after
    that, the first poll comes at 80 % of the usual duration (an exponentially weighted
    mean of those seen done), then every twentieth of the age (within ~5 %); always
    within [``minimum``, ``maximum``].
    """

    minimum: float
    maximum: float
    weight: float = 0.2  # of each new duration in the mean
    typical: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_delay(self, age: float) -> float:
        """Seconds until the next poll of a request submitted ``age`` seconds ago."""
        typical = self.typical
        if typical is None:
            delay = age / 5
        elif age < 0.8 * typical:
            delay = 0.8 * typical - age
        else:
            delay = age / 20
        return min(self.maximum, max(self.minimum, delay))

    def observe(self, duration: float) -> None:
        """A request was seen done ``duration`` seconds after its submit."""
        with self._lock:
            if self.typical is None:
                self.typical = duration
            else:
                self.typical += self.weight * (duration - self.typical)
