"""Which of this process's jobs waiting for a fleet slot goes first: the most urgent.

The fleet's slots are taken by whichever waiter asks first, so a single job submitted
behind a running batch could wait while the batch's items, already claimed and waiting
in the same worker, took every slot freed before it (up to a window of them). Waiters
register their priority here; one outranked by a waiter of a higher priority in the same
process does not ask for a slot until that one has one. Across processes the broker's
priorities order who is claimed first; within one, this orders who calls first.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class SlotWaiters:
    """The priorities of the jobs of this process waiting for a slot now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: Counter[int] = Counter()

    @contextmanager
    def waiting(self, priority: int) -> Iterator[None]:
        """Count a job of ``priority`` as waiting for a slot until the block ends."""
        with self._lock:
            self._waiting[priority] += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting[priority] -= 1
                if not self._waiting[priority]:
                    del self._waiting[priority]

    def outranked(self, priority: int) -> bool:
        """Whether a job more urgent than ``priority`` is waiting for a slot."""
        with self._lock:
            return any(other > priority for other in self._waiting)
