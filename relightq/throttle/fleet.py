"""Fleet-wide admission to Segmind: pause, 429 hold, concurrency cap and calls per minute.

Every worker process on every host asks :meth:`RedisFleet.acquire` before an upstream
call. One Lua script decides atomically, so a call admitted after a pause was recorded is
impossible (docs/reference/guarantees.md, guarantee 3), and the caps hold across
processes (guarantee 4).

Why a script rather than libraries: the concurrency cap is the counting semaphore of
"Redis in Action" §6.3 (a sorted set of holders scored by expiry, so a killed worker's
slot frees itself), and the per-minute cap is the sliding-window log that the ``limits``
library calls a moving window. ``limits`` covers only the second and no maintained
library covers the first; composing two libraries means two round trips, and a pause
recorded between them would let a call through. Redis' own clock (``TIME``) is used so
hosts with skewed clocks still agree.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import redis

ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local born = tonumber(redis.call('GET', KEYS[5]) or '0')
if born == 0 then
  redis.call('SET', KEYS[5], now)
  born = now
end
if now - born < tonumber(ARGV[5]) then return {0, 'warming', born + tonumber(ARGV[5]) - now} end
if redis.call('HGET', KEYS[1], 'paused') == '1' then return {0, 'paused', 0} end
local hold = tonumber(redis.call('GET', KEYS[4]) or '0')
if hold > now then return {0, 'rate_limited', hold - now} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return {0, 'concurrency', 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {0, 'rate', tonumber(oldest[2]) + 60000 - now}
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('HINCRBY', KEYS[1], 'admitted', 1)
return {1, 'ok', 0}
"""

# Every process re-asserts the slots it holds; after a FLUSHALL or a Redis restart this
# puts calls still on the wire back into the count before anyone else is admitted.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
"""

# Returns 1 when this call moved the fleet from running to paused. A manual pause is
# never downgraded to an automatic one, so only an operator lifts it.
PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local was = redis.call('HGET', KEYS[1], 'paused') == '1'
if was and redis.call('HGET', KEYS[1], 'manual') == '1' and ARGV[3] == '0' then return 0 end
redis.call('HSET', KEYS[1], 'paused', '1', 'code', ARGV[1], 'reason', ARGV[2],
           'manual', ARGV[3], 'paused_at', now)
if was then return 0 end
redis.call('HINCRBY', KEYS[1], 'pause_count', 1)
return 1
"""

# Returns 1 when this call resumed the fleet; an automatic resume leaves a manual pause.
RESUME = """
if redis.call('HGET', KEYS[1], 'paused') ~= '1' then return 0 end
if redis.call('HGET', KEYS[1], 'manual') == '1' and ARGV[1] == '0' then return 0 end
redis.call('HSET', KEYS[1], 'paused', '0', 'manual', '0', 'code', '', 'reason', '')
return 1
"""


@dataclass(frozen=True)
class Admission:
    """The fleet's answer to "may I call Segmind now?"."""

    admitted: bool
    reason: str  # ok | paused | rate_limited | concurrency | rate
    retry_after: float = 0.0  # seconds, when the fleet knows


@dataclass(frozen=True)
class FleetState:
    """What GET /v1/throttle shows."""

    paused: bool
    code: str | None
    reason: str | None
    manual: bool
    paused_at: float | None
    credits: float | None
    credits_seen_at: float | None
    in_flight: int
    calls_last_minute: int
    admitted_total: int


class Fleet(Protocol):
    """Admission and pause state shared by every worker of a deployment."""

    def acquire(self, token: str, ttl_seconds: float | None = None) -> Admission: ...
    def release(self, token: str) -> None: ...
    def keep(self, token: str, ttl_seconds: float) -> None: ...
    def let_go(self, token: str) -> None: ...
    def wait_for_release(self, timeout: float) -> None: ...
    def pause(self, code: str, reason: str, *, manual: bool = False) -> bool: ...
    def resume(self, *, manual: bool = False) -> bool: ...
    def hold_until(self, epoch_seconds: float) -> None: ...
    def record_credits(self, credits: Decimal | float) -> None: ...
    def state(self) -> FleetState: ...
    def claim_probe(self, ttl_seconds: float) -> bool: ...
    def release_probe(self) -> None: ...
    def probe_failures(self, *, increment: bool = False, reset: bool = False) -> int: ...
    def take_turn(self, duty: str, ttl_seconds: float) -> bool: ...


class RedisFleet:
    """The production Fleet: one Redis hash, two sorted sets and a few strings per deployment.

    A slot lives ``slot_ttl_seconds`` unless its holder's heartbeat renews it, so a killed
    worker's slots free themselves quickly while a long call keeps its own. When the
    state is gone (FLUSHALL, a Redis restart without AOF) nobody is admitted for two
    heartbeats, time enough for every live holder to put its calls back into the count.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_concurrent: int,
        max_per_minute: int,
        slot_ttl_seconds: float = 10.0,
        heartbeat_seconds: float = 1.0,
        prefix: str = "relightq:throttle",
    ) -> None:
        # Any: redis-py's sync/async union return types differ between 7.x and 8.x stubs.
        self._redis: Any = client
        self.max_concurrent = max_concurrent
        self.max_per_minute = max_per_minute
        self._slot_ttl_ms = int(slot_ttl_seconds * 1000)
        self._heartbeat = heartbeat_seconds
        self._warmup_ms = int(2 * heartbeat_seconds * 1000)
        # token -> its lifetime in ms, renewed by this process's heartbeat while held.
        self._held: dict[str, int] = {}
        self._held_lock = threading.Lock()
        self._released = threading.Condition()
        self._beating: threading.Thread | None = None
        self._epoch = f"{prefix}:epoch"
        self._state = f"{prefix}:state"
        self._slots = f"{prefix}:slots"
        self._window = f"{prefix}:window"
        self._hold = f"{prefix}:hold_until"
        self._probe = f"{prefix}:probe"
        self._failures = f"{prefix}:probe_failures"
        self._acquire = client.register_script(ACQUIRE)
        self._pause = client.register_script(PAUSE)
        self._resume = client.register_script(RESUME)
        self._renew = client.register_script(HEARTBEAT)

    def acquire(self, token: str, ttl_seconds: float | None = None) -> Admission:
        """Admit one call now, or say why not and for how long.

        ``ttl_seconds``: how long the slot outlives its holder's last heartbeat (default:
        the fleet's slot TTL). A v2 request stays in flight at Segmind when its worker
        dies, so its slot lives long enough for another worker to take the job over.
        """
        self._start_heartbeat()
        ttl_ms = self._slot_ttl_ms if ttl_seconds is None else int(ttl_seconds * 1000)
        admitted, reason, retry_ms = self._acquire(
            keys=[self._state, self._slots, self._window, self._hold, self._epoch],
            args=[token, self.max_concurrent, self.max_per_minute, ttl_ms, self._warmup_ms],
        )
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        if admitted:
            with self._held_lock:
                self._held[token] = ttl_ms
        return Admission(bool(admitted), reason, int(retry_ms) / 1000)

    def keep(self, token: str, ttl_seconds: float) -> None:
        """Count ``token`` as a call in flight without asking: a request already submitted
        (taken over from another worker), which Segmind is running whatever the cap says."""
        self._start_heartbeat()
        ttl_ms = int(ttl_seconds * 1000)
        with self._held_lock:
            self._held[token] = ttl_ms
        self._renew(keys=[self._slots], args=[ttl_ms, token])

    def let_go(self, token: str) -> None:
        """Stop renewing ``token`` but leave it counted until it expires: the request is
        still in flight and another worker is about to keep it."""
        with self._held_lock:
            self._held.pop(token, None)

    def release(self, token: str) -> None:
        """Free the concurrency slot of a finished call (its minute-window entry stays)."""
        with self._held_lock:
            self._held.pop(token, None)
        self._redis.zrem(self._slots, token)
        with self._released:
            self._released.notify()

    def wait_for_release(self, timeout: float) -> None:
        """Sleep until this process frees a slot, or ``timeout`` seconds (a slot freed by
        another process is seen at the next try)."""
        with self._released:
            self._released.wait(timeout)

    def renew(self) -> int:
        """Re-assert every slot this process holds; returns how many."""
        with self._held_lock:
            held = dict(self._held)
        by_ttl: dict[int, list[str]] = {}
        for token, ttl_ms in held.items():
            by_ttl.setdefault(ttl_ms, []).append(token)
        for ttl_ms, tokens in by_ttl.items():
            self._renew(keys=[self._slots], args=[ttl_ms, *tokens])
        return len(held)

    def _start_heartbeat(self) -> None:
        if self._beating is not None:
            return
        with self._held_lock:
            if self._beating is None:
                self._beating = threading.Thread(
                    target=self._beat, name="relightq-fleet-heartbeat", daemon=True
                )
                self._beating.start()

    def _beat(self) -> None:
        while True:
            time.sleep(self._heartbeat)
            # Redis down: the next beat tries again; admissions fail meanwhile.
            with suppress(redis.RedisError):
                self.renew()

    def pause(self, code: str, reason: str, *, manual: bool = False) -> bool:
        """Record a pause; True if the fleet was running until now."""
        return bool(
            self._pause(keys=[self._state], args=[code, reason[:500], "1" if manual else "0"])
        )

    def resume(self, *, manual: bool = False) -> bool:
        """Lift the pause; an automatic resume never lifts a manual pause."""
        resumed = bool(self._resume(keys=[self._state], args=["1" if manual else "0"]))
        if resumed:
            self._redis.delete(self._failures)
        return resumed

    def hold_until(self, epoch_seconds: float) -> None:
        """Admit nothing before ``epoch_seconds`` (Segmind's 429 reset time)."""
        ms = int(epoch_seconds * 1000)
        # Keep the later of two holds; a stale key expires on its own.
        current = int(self._redis.get(self._hold) or 0)
        if ms > current:
            self._redis.set(self._hold, ms, px=max(1, ms - int(time.time() * 1000)) + 60_000)

    def record_credits(self, credits: Decimal | float) -> None:
        """Remember the balance Segmind last reported."""
        self._redis.hset(
            self._state, mapping={"credits": str(credits), "credits_seen_at": time.time()}
        )

    def state(self) -> FleetState:
        """The shared state as of now."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline()
        pipe.hgetall(self._state)
        pipe.zcount(self._slots, now_ms, "+inf")
        pipe.zcount(self._window, now_ms - 60_000, "+inf")
        raw, in_flight, last_minute = pipe.execute()
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return FleetState(
            paused=data.get("paused") == "1",
            code=data.get("code") or None,
            reason=data.get("reason") or None,
            manual=data.get("manual") == "1",
            paused_at=_float(data.get("paused_at"), scale=1000),
            credits=_float(data.get("credits")),
            credits_seen_at=_float(data.get("credits_seen_at")),
            in_flight=int(in_flight),
            calls_last_minute=int(last_minute),
            admitted_total=int(data.get("admitted") or 0),
        )

    def claim_probe(self, ttl_seconds: float) -> bool:
        """True for exactly one caller per ``ttl_seconds``: the one that schedules a probe."""
        return bool(self._redis.set(self._probe, "1", nx=True, px=int(ttl_seconds * 1000)))

    def release_probe(self) -> None:
        """Let the next caller schedule a probe."""
        self._redis.delete(self._probe)

    def probe_failures(self, *, increment: bool = False, reset: bool = False) -> int:
        """Consecutive probes that did not resume the fleet (drives their backoff)."""
        if reset:
            self._redis.delete(self._failures)
            return 0
        if increment:
            return int(self._redis.incr(self._failures))
        return int(self._redis.get(self._failures) or 0)

    def take_turn(self, duty: str, ttl_seconds: float) -> bool:
        """True for one caller across the fleet per ``ttl_seconds``: the one to do ``duty``."""
        key = f"{self._probe}:turn:{duty}"
        return bool(self._redis.set(key, "1", nx=True, px=max(1, int(ttl_seconds * 1000))))


def _float(value: str | None, scale: float = 1.0) -> float | None:
    return float(value) / scale if value not in (None, "") else None


@dataclass
class LocalFleet:
    """The same semantics inside one process, for the demo (no Redis there)."""

    max_concurrent: int
    max_per_minute: int
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Condition = field(default_factory=threading.Condition)
    _slots: set[str] = field(default_factory=set)
    _window: deque[float] = field(default_factory=deque)
    _data: dict[str, Any] = field(default_factory=dict)

    def acquire(self, token: str, ttl_seconds: float | None = None) -> Admission:
        """Admit one call now, or say why not (one process: a slot never outlives it)."""
        with self._lock:
            now = time.time()
            if self._data.get("paused"):
                return Admission(False, "paused")
            if self._data.get("hold", 0) > now:
                return Admission(False, "rate_limited", self._data["hold"] - now)
            if len(self._slots) >= self.max_concurrent:
                return Admission(False, "concurrency")
            while self._window and self._window[0] <= now - 60:
                self._window.popleft()
            if len(self._window) >= self.max_per_minute:
                return Admission(False, "rate", self._window[0] + 60 - now)
            self._slots.add(token)
            self._window.append(now)
            self._data["admitted"] = self._data.get("admitted", 0) + 1
            return Admission(True, "ok")

    def release(self, token: str) -> None:
        """Free a slot."""
        with self._lock:
            self._slots.discard(token)
        with self._released:
            self._released.notify()

    def wait_for_release(self, timeout: float) -> None:
        """Sleep until a slot is freed, or ``timeout`` seconds."""
        with self._released:
            self._released.wait(timeout)

    def keep(self, token: str, ttl_seconds: float) -> None:
        """Count a request already submitted."""
        with self._lock:
            self._slots.add(token)

    def let_go(self, token: str) -> None:
        """One process: nobody else takes the request over, so the slot is freed."""
        self.release(token)

    def pause(self, code: str, reason: str, *, manual: bool = False) -> bool:
        """Record a pause."""
        with self._lock:
            was = bool(self._data.get("paused"))
            if was and self._data.get("manual") and not manual:
                return False
            self._data.update(
                paused=True, code=code, reason=reason, manual=manual, paused_at=time.time()
            )
            return not was

    def resume(self, *, manual: bool = False) -> bool:
        """Lift the pause."""
        with self._lock:
            if not self._data.get("paused") or (self._data.get("manual") and not manual):
                return False
            self._data.update(paused=False, manual=False, code=None, reason=None, failures=0)
            return True

    def hold_until(self, epoch_seconds: float) -> None:
        """Admit nothing before then."""
        with self._lock:
            self._data["hold"] = max(self._data.get("hold", 0), epoch_seconds)

    def record_credits(self, credits: Decimal | float) -> None:
        """Remember the balance."""
        with self._lock:
            self._data.update(credits=float(credits), credits_seen_at=time.time())

    def state(self) -> FleetState:
        """The state as of now."""
        with self._lock:
            d = self._data
            return FleetState(
                paused=bool(d.get("paused")),
                code=d.get("code"),
                reason=d.get("reason"),
                manual=bool(d.get("manual")),
                paused_at=d.get("paused_at"),
                credits=d.get("credits"),
                credits_seen_at=d.get("credits_seen_at"),
                in_flight=len(self._slots),
                calls_last_minute=sum(t > time.time() - 60 for t in self._window),
                admitted_total=d.get("admitted", 0),
            )

    def claim_probe(self, ttl_seconds: float) -> bool:
        """One probe at a time."""
        with self._lock:
            if self._data.get("probe_until", 0) > time.time():
                return False
            self._data["probe_until"] = time.time() + ttl_seconds
            return True

    def release_probe(self) -> None:
        """Allow the next probe."""
        with self._lock:
            self._data["probe_until"] = 0

    def probe_failures(self, *, increment: bool = False, reset: bool = False) -> int:
        """Consecutive failed probes."""
        with self._lock:
            if reset:
                self._data["failures"] = 0
            elif increment:
                self._data["failures"] = self._data.get("failures", 0) + 1
            return int(self._data.get("failures", 0))

    def take_turn(self, duty: str, ttl_seconds: float) -> bool:
        """One process: its turn whenever the last one is over."""
        with self._lock:
            key = f"turn:{duty}"
            if self._data.get(key, 0) > time.time():
                return False
            self._data[key] = time.time() + ttl_seconds
            return True
