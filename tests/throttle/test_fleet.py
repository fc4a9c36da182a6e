"""RedisFleet on the real Redis: pause, holds and caps, across threads and processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from relightq.throttle.fleet import RedisFleet

URL = os.environ["RELIGHTQ_BROKER_URL"]


def make_fleet(
    prefix: str, concurrent: int = 3, per_minute: int = 1000, ttl: float = 30, warm: bool = True
) -> RedisFleet:
    if warm:  # as if the deployment had been up for a while
        redis.Redis.from_url(URL).set(f"{prefix}:epoch", 1, nx=True)
    return RedisFleet(
        redis.Redis.from_url(URL),
        max_concurrent=concurrent,
        max_per_minute=per_minute,
        slot_ttl_seconds=ttl,
        heartbeat_seconds=0.1,
        prefix=prefix,
    )


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test:{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(URL)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def test_a_paused_fleet_admits_nobody_until_resumed(prefix: str) -> None:
    fleet = make_fleet(prefix)
    assert fleet.pause("segmind_out_of_credits", "Not enough credits") is True
    assert fleet.pause("segmind_out_of_credits", "again") is False  # already paused
    assert fleet.acquire("a").reason == "paused"
    state = fleet.state()
    assert state.paused and state.code == "segmind_out_of_credits" and state.paused_at
    assert fleet.resume() is True
    assert fleet.acquire("a").admitted


def test_an_automatic_resume_never_lifts_an_operators_pause(prefix: str) -> None:
    fleet = make_fleet(prefix)
    fleet.pause("manual", "maintenance", manual=True)
    assert fleet.pause("segmind_unauthorized", "bad key") is False
    assert fleet.state().code == "manual"
    assert fleet.resume() is False and fleet.state().paused
    assert fleet.resume(manual=True) is True and not fleet.state().paused


def test_the_concurrency_cap_admits_exactly_the_cap(prefix: str) -> None:
    fleet = make_fleet(prefix, concurrent=3)
    assert [fleet.acquire(f"t{i}").admitted for i in range(5)] == [True, True, True, False, False]
    assert fleet.acquire("t9").reason == "concurrency"
    fleet.release("t0")
    assert fleet.acquire("t9").admitted
    assert fleet.state().in_flight == 3


def test_a_dead_holders_slot_frees_itself_after_its_ttl(prefix: str) -> None:
    killed = make_fleet(prefix, concurrent=1, ttl=0.3)
    assert killed.acquire("killed-worker").admitted
    killed._held.clear()  # its process is gone: nobody renews the slot any more
    other = make_fleet(prefix, concurrent=1, ttl=0.3)
    assert not other.acquire("next").admitted
    time.sleep(0.5)
    assert other.acquire("next").admitted


def test_a_live_holders_slot_outlasts_its_ttl_through_heartbeats(prefix: str) -> None:
    holder = make_fleet(prefix, concurrent=1, ttl=0.3)
    assert holder.acquire("long-call").admitted
    time.sleep(0.8)  # several TTLs
    assert make_fleet(prefix, concurrent=1).acquire("next").reason == "concurrency"


def test_after_redis_loses_its_state_calls_in_flight_are_counted_again(prefix: str) -> None:
    holder = make_fleet(prefix, concurrent=2, ttl=5)
    assert holder.acquire("a").admitted and holder.acquire("b").admitted
    client = redis.Redis.from_url(URL)
    for key in client.scan_iter(f"{prefix}:*"):  # what FLUSHALL does to this deployment
        client.delete(key)
    newcomer = make_fleet(prefix, concurrent=2, ttl=5, warm=False)
    assert newcomer.acquire("c").reason == "warming"  # holders get time to re-register
    time.sleep(0.3)
    assert newcomer.acquire("c").reason == "concurrency"  # a and b are back in the count


def test_the_per_minute_cap_says_when_the_next_call_may_start(prefix: str) -> None:
    fleet = make_fleet(prefix, concurrent=100, per_minute=5)
    for i in range(5):
        assert fleet.acquire(f"t{i}").admitted
        fleet.release(f"t{i}")
    denied = fleet.acquire("t5")
    assert denied.reason == "rate" and 55 < denied.retry_after <= 60
    assert fleet.state().calls_last_minute == 5


def test_a_429_holds_every_worker_until_the_reset_time(prefix: str) -> None:
    fleet = make_fleet(prefix)
    fleet.hold_until(time.time() + 0.5)
    denied = fleet.acquire("a")
    assert denied.reason == "rate_limited" and 0 < denied.retry_after <= 0.5
    time.sleep(0.6)
    assert fleet.acquire("a").admitted


def test_no_call_is_admitted_after_a_pause_is_recorded(prefix: str) -> None:
    fleet = make_fleet(prefix, concurrent=1000)
    stop = threading.Event()

    def hammer(n: int) -> None:
        other = make_fleet(prefix, concurrent=1000)
        i = 0
        while not stop.is_set():
            other.acquire(f"{n}-{i}")
            i += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    fleet.pause("segmind_out_of_credits", "Not enough credits")
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    client: Any = redis.Redis.from_url(URL)
    paused_at_ms = float(client.hget(f"{prefix}:state", "paused_at") or 0)
    admitted: list[tuple[bytes, float]] = client.zrange(  # type: ignore[assignment]
        f"{prefix}:window", 0, -1, withscores=True
    )
    assert len(admitted) > 10  # the hammering really was admitted before the pause
    assert max(score for _, score in admitted) <= paused_at_ms


def _hold_slots(prefix: str, rounds: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    fleet = make_fleet(prefix, concurrent=3)
    client: Any = redis.Redis.from_url(URL)
    peak = 0
    for i in range(rounds):
        token = f"{os.getpid()}-{i}"
        while not fleet.acquire(token).admitted:
            time.sleep(0.001)
        peak = max(peak, int(client.incr(f"{prefix}:holders")))
        time.sleep(0.002)
        client.decr(f"{prefix}:holders")
        fleet.release(token)
    out.put(peak)


def test_the_cap_holds_across_processes(prefix: str) -> None:
    out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    workers = [
        multiprocessing.Process(target=_hold_slots, args=(prefix, 40, out)) for _ in range(6)
    ]
    for process in workers:
        process.start()
    peaks = [out.get(timeout=60) for _ in workers]
    for process in workers:
        process.join()
    assert max(peaks) == 3  # reached, never exceeded
