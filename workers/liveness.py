"""Round heartbeats and the reaper: a round whose worker died is recorded as abandoned.

Every started round has an entry in `keys.active_rounds` (HASH round_id -> JSON heartbeat:
stage, worker, started_at, beat_at). A running stage refreshes it every third of
`round_lock_ttl_s` (and on entering/leaving the stage). `reap()` (a beat task every
`round_reap_interval_s`, and the start of every `rlhf.round`) finds rounds whose heartbeat is
older than `round_heartbeat_timeout_s` and whose lock has lapsed: their worker died (kill -9,
OOM, node loss). It claims each one with HDEL (so exactly one process finalises it), then records
it in the round history as failed/abandoned, frees the lock and removes the scratch directory.

A dead round is not retried: a worker killed mid-round is most often killed for its memory, so a
retry would die the same way; nothing is lost (its feedback is in a training-set snapshot, which
every later round trains on), and the next round starts as usual. Celery keeps the dead task's
message until its visibility timeout and then redelivers it; that stale stage sees its round is
no longer active and stops without touching anything (`RoundGone`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Iterator

log = logging.getLogger(__name__)

# Refresh a heartbeat only while the round is still active (a reaped round is never revived).
_BEAT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local beat = cjson.decode(raw)
beat['beat_at'] = tonumber(ARGV[2])
if ARGV[3] ~= '' then beat['stage'] = ARGV[3] end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(beat))
return 1
"""


# Extend the round lock to the stage TTL only if it would lapse sooner (never shortens a longer
# hand-off expiry set between stages).
_KEEP_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RoundGone(RuntimeError):
    """The round was finished or abandoned already: a stale (redelivered) stage must stop."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def register(ctx, round_id: str, round_number: int | None = None) -> None:
    """Marks a round as active (called right after it took the lock)."""
    now = time.time()
    beat = {"round_id": round_id, "round_number": round_number, "stage": "start",
            "worker": worker_name(), "started_at": now, "beat_at": now}
    ctx.redis.hset(ctx.keys.active_rounds, round_id, json.dumps(beat))


def beat(ctx, round_id: str, stage: str = "") -> bool:
    """Refreshes the round's heartbeat; False when the round is no longer active."""
    return bool(ctx.redis.eval(_BEAT, 1, ctx.keys.active_rounds, round_id, time.time(), stage))


def retire(ctx, round_id: str) -> bool:
    """Removes the round from the active set; True for exactly one caller (the one that ends it)."""
    return bool(ctx.redis.hdel(ctx.keys.active_rounds, round_id))


def active(ctx) -> dict[str, dict]:
    raw = ctx.redis.hgetall(ctx.keys.active_rounds)
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def _pulse(ctx, round_id: str, keep_lock: bool = True) -> None:
    """One heartbeat, and the round lock kept for at least a stage TTL if this round holds it."""
    try:
        beat(ctx, round_id)
        if keep_lock:
            ctx.redis.eval(_KEEP_LOCK, 1, ctx.lock.key, round_id, ctx.lock.ttl_ms)
    except Exception:  # a Redis blip: the next beat tries again
        log.warning("round %s heartbeat failed", round_id, exc_info=True)


@contextlib.contextmanager
def heartbeat(ctx, round_id: str, stage: str) -> Iterator[None]:
    """Keeps the round's heartbeat (and lock) fresh for the whole stage, its imports included;
    RoundGone if the round is no longer active. Entering a stage sets the lock to the stage TTL
    (a worker that dies in it lets the lock lapse within that TTL); leaving it beats once more and
    leaves the lock as the stage left it."""
    if not beat(ctx, round_id, stage):
        raise RoundGone(f"round {round_id} is no longer active (finished or abandoned); stale {stage} stops")
    ctx.lock.extend(round_id)
    stop = threading.Event()
    interval = max(0.2, ctx.settings.round_lock_ttl_s / 3)

    def loop() -> None:
        while not stop.wait(interval):
            _pulse(ctx, round_id)

    thread = threading.Thread(target=loop, daemon=True, name="round-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _pulse(ctx, round_id, keep_lock=False)  # hand-off: the next stage has a full timeout to start


def _finished(ctx, round_id: str) -> bool:
    """The round is already in the history (it ended but died before leaving the active set)."""
    return any(json.loads(raw).get("round_id") == round_id for raw in ctx.redis.lrange(ctx.keys.rounds, 0, -1))


def reap(ctx, finish, now: float | None = None) -> list[dict]:
    """Abandons every round whose heartbeat is stale and whose lock has lapsed; returns their records.

    `finish(ctx, round_id, summary)` records the round, frees its lock and removes its scratch dir
    (workers.rounds.finish).
    """
    now = time.time() if now is None else now
    timeout = ctx.settings.round_heartbeat_timeout_s
    holder = ctx.lock.holder()
    reaped = []
    for round_id, hb in active(ctx).items():
        silent = now - float(hb.get("beat_at", 0))
        if silent < timeout or holder == round_id:
            continue
        if not retire(ctx, round_id):
            continue  # another reaper (or the round itself) got there first
        if _finished(ctx, round_id):
            continue
        record = {"round_id": round_id, "round_number": hb.get("round_number"), "failed": True, "abandoned": True,
                  "stage": hb.get("stage"), "worker": hb.get("worker"), "at": now,
                  "reason": f"worker {hb.get('worker')} stopped during {hb.get('stage')}: "
                            f"no heartbeat for {silent:.0f}s (limit {timeout:g}s)"}
        finish(ctx, round_id, record)
        log.error("round %s abandoned: %s", round_id, record["reason"])
        reaped.append(record)
    return reaped
