"""One training round at a time, across every worker: a Redis lock with a heartbeat.

The lock's value is the round id. Its expiry is short (`round_lock_ttl_s`) and a heartbeat
thread extends it while a stage runs, so a killed worker's lock lapses quickly and the next round
can start; a stage whose round no longer holds the lock stops without touching anything.
Between stages the round's next task waits in a queue (e.g. `gpu`, for a GPU worker that may be
busy or still starting): taking the lock and every hand-off set the longer `handoff_ttl_s`
(`round_handoff_ttl_s`), so the lock covers the whole chain, queue waits included.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import redis

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LockLost(RuntimeError):
    """This round no longer holds the round lock (it expired and another round took it)."""


class RoundLock:
    def __init__(self, r: redis.Redis, key: str, ttl_s: float, handoff_ttl_s: float | None = None):
        self.r = r
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.handoff_ms = int((handoff_ttl_s if handoff_ttl_s else ttl_s) * 1000)

    def acquire(self, round_id: str) -> bool:
        """Takes the lock for the hand-off TTL: the round's first task waits in a queue too."""
        return bool(self.r.set(self.key, round_id, nx=True, px=self.handoff_ms))

    def holder(self) -> str | None:
        value = self.r.get(self.key)
        return value.decode() if value else None

    def extend(self, round_id: str) -> bool:
        return bool(self.r.eval(_EXTEND, 1, self.key, round_id, self.ttl_ms))

    def release(self, round_id: str) -> bool:
        return bool(self.r.eval(_RELEASE, 1, self.key, round_id))

    def check(self, round_id: str) -> None:
        if not self.extend(round_id):
            raise LockLost(f"round {round_id} no longer holds {self.key}")

    @contextlib.contextmanager
    def held(self, round_id: str) -> Iterator[None]:
        """Checks the lock, then keeps extending it while the block runs; on leaving, hands off:
        the lock then lasts `handoff_ttl_s`, while the next stage (or a retry) waits in a queue."""
        self.check(round_id)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl_ms / 3000):
                self.extend(round_id)

        thread = threading.Thread(target=beat, daemon=True, name="round-lock")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.r.eval(_EXTEND, 1, self.key, round_id, self.handoff_ms)
