"""The poller of v2 requests: hundreds in flight on a few threads, each polled when due."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from relightq.jobs import polling
from relightq.jobs.polling import Poller, PollSchedule
from relightq.jobs.service import JOB_LEASES
from relightq.leases import Lease


def lease() -> Lease:
    return Lease(JOB_LEASES, uuid.uuid4(), uuid.uuid4(), time.monotonic() + 60)


def test_hundreds_of_requests_are_polled_by_a_few_threads_each_until_it_is_done() -> None:
    poller = Poller(threads=4)
    polls: dict[int, int] = {}
    lock = threading.Lock()
    threads_seen: set[str] = set()

    def step_for(n: int) -> Callable[[], float | None]:
        def step() -> float | None:
            with lock:
                polls[n] = polls.get(n, 0) + 1
                threads_seen.add(threading.current_thread().name)
                return None if polls[n] == 3 else 0.05  # done on the third poll

        return step

    before = threading.active_count()
    for n in range(300):
        poller.track(lease(), step_for(n), 0.01)
    assert len(poller) == 300
    deadline = time.monotonic() + 20
    while len(poller) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(poller) == 0
    assert polls == {n: 3 for n in range(300)}
    # One scheduler thread and a pool of four, whatever the number of requests.
    assert threading.active_count() - before <= 5
    assert len(threads_seen) <= 4


def test_a_step_that_crashes_is_polled_again_rather_than_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(polling, "RETRY_CRASHED_STEP_SECONDS", 0.05)
    poller = Poller(threads=1)
    calls: list[float] = []

    def flaky() -> float | None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return None

    poller.track(lease(), flaky, 0)
    deadline = time.monotonic() + 5
    while len(poller) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) == 2 and len(poller) == 0


def test_poll_all_now_makes_every_entry_due_at_once() -> None:
    poller = Poller(threads=2)
    ran = threading.Event()
    held = [lease() for _ in range(5)]

    def step() -> float | None:
        ran.set()
        return None

    for each in held:
        poller.track(each, step, 3600)
    assert {x.token for x in poller.leases()} == {x.token for x in held}
    time.sleep(0.1)
    assert not ran.is_set()
    poller.poll_all_now()
    assert ran.wait(2)


def test_until_a_request_was_seen_done_polls_come_at_a_fifth_of_its_age() -> None:
    schedule = PollSchedule(minimum=0.1, maximum=30)
    assert schedule.next_delay(0) == 0.1
    assert schedule.next_delay(10) == pytest.approx(2.0)
    assert schedule.next_delay(1000) == 30


def test_once_durations_are_known_the_first_poll_comes_at_80_percent_then_often() -> None:
    schedule = PollSchedule(minimum=0.1, maximum=30)
    schedule.observe(30.0)
    assert schedule.next_delay(0) == pytest.approx(24.0)
    assert schedule.next_delay(24.0) == pytest.approx(1.2)  # a twentieth of the age
    assert schedule.next_delay(31.0) == pytest.approx(1.55)
    schedule.observe(40.0)  # a moving average: one slow request moves it a fifth of the way
    assert schedule.typical == pytest.approx(32.0)
