"""Within one worker process, a slot freed goes to the most urgent job waiting for one."""

from __future__ import annotations

import threading
import time

from relightq.jobs.runner import wait_for_slot
from relightq.throttle.fleet import LocalFleet
from relightq.throttle.waiters import SlotWaiters


def test_a_waiter_is_outranked_only_by_a_more_urgent_one_still_waiting() -> None:
    waiters = SlotWaiters()
    assert not waiters.outranked(4)
    with waiters.waiting(5):
        assert waiters.outranked(4)
        assert not waiters.outranked(5)
        assert not waiters.outranked(9)
    assert not waiters.outranked(4)


def test_a_single_job_waiting_behind_batch_items_gets_the_next_slot_first() -> None:
    # One slot, held; three batch items (priority 4) start waiting, then a single job (5).
    fleet, waiters = LocalFleet(1, 1000), SlotWaiters()
    assert fleet.acquire("running").admitted
    order: list[str] = []

    def wait(name: str, priority: int) -> None:
        admission = wait_for_slot(fleet, name, 10, waiters=waiters, priority=priority)
        assert admission.admitted
        order.append(name)
        time.sleep(0.05)  # its call
        fleet.release(name)

    threads = [threading.Thread(target=wait, args=(f"item{n}", 4)) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)  # the items are waiting at the slot
    single = threading.Thread(target=wait, args=("single", 5))
    single.start()
    time.sleep(0.05)
    fleet.release("running")
    for thread in [*threads, single]:
        thread.join(10)
    assert order[0] == "single"
    assert sorted(order[1:]) == ["item0", "item1", "item2"]


def test_an_outranked_waiter_still_gives_up_at_its_deadline() -> None:
    fleet, waiters = LocalFleet(1, 1000), SlotWaiters()
    with waiters.waiting(9):  # a more urgent job waits for good
        started = time.monotonic()
        admission = wait_for_slot(fleet, "late", 0.2, waiters=waiters, priority=1)
    assert not admission.admitted and admission.reason == "concurrency"
    assert time.monotonic() - started < 1
