"""Round heartbeats and the reaper on real Redis (the kill -9 version is in tests/e2e)."""

from __future__ import annotations

import json
import time

import pytest

from workers import liveness, rounds


@pytest.fixture
def ctx(settings):
    settings = settings.model_copy(update={"round_lock_ttl_s": 2.0, "round_heartbeat_timeout_s": 5.0})
    c = rounds.Context(settings)
    yield c
    c.redis.close()


def start(ctx, round_id: str) -> dict:
    assert ctx.lock.acquire(round_id)
    state = {"round_id": round_id, "round_number": 1}
    liveness.register(ctx, round_id, 1)
    (ctx.workdir(round_id) / "reward_model").mkdir(parents=True)
    return state


def history(ctx) -> list[dict]:
    return [json.loads(raw) for raw in ctx.redis.lrange(ctx.keys.rounds, 0, -1)]


def test_a_silent_round_is_abandoned_once_its_lock_and_scratch_dir_freed(ctx):
    start(ctx, "dead1")
    with liveness.heartbeat(ctx, "dead1", "ppo"):
        pass
    ctx.redis.delete(ctx.keys.round_lock)  # the lock lapsed (its worker died)
    assert liveness.reap(ctx, rounds.finish) == []  # heartbeat still fresh: not yet
    later = time.time() + 6
    reaped = liveness.reap(ctx, rounds.finish, now=later)
    assert [r["round_id"] for r in reaped] == ["dead1"]
    [record] = history(ctx)
    assert record["failed"] and record["abandoned"] and record["stage"] == "ppo"
    assert "no heartbeat" in record["reason"]
    assert not ctx.workdir("dead1").exists()
    assert ctx.lock.holder() is None and liveness.active(ctx) == {}
    assert liveness.reap(ctx, rounds.finish, now=later) == []  # recorded exactly once
    assert len(history(ctx)) == 1


def test_a_stale_stage_of_an_abandoned_round_stops_and_does_not_revive_it(ctx):
    start(ctx, "dead2")
    ctx.redis.delete(ctx.keys.round_lock)
    liveness.reap(ctx, rounds.finish, now=time.time() + 6)
    assert not liveness.beat(ctx, "dead2")
    with pytest.raises(liveness.RoundGone):
        with liveness.heartbeat(ctx, "dead2", "ppo"):
            raise AssertionError("a stale stage must not run")
    assert liveness.active(ctx) == {}


def test_a_round_holding_its_lock_or_beating_is_not_reaped(ctx):
    start(ctx, "alive")
    assert liveness.reap(ctx, rounds.finish, now=time.time() + 60) == []  # lock still held by it
    ctx.redis.delete(ctx.keys.round_lock)
    with liveness.heartbeat(ctx, "alive", "ppo"):
        time.sleep(1.0)  # beats every ttl/3
        beat_at = liveness.active(ctx)["alive"]["beat_at"]
        assert liveness.reap(ctx, rounds.finish) == []
    assert time.time() - beat_at < 1.0
    assert liveness.active(ctx)["alive"]["stage"] == "ppo"


def test_a_round_that_finished_but_was_not_retired_is_not_recorded_twice(ctx):
    start(ctx, "done")
    rounds.finish(ctx, "done", {"round_id": "done", "promoted": True})
    assert liveness.reap(ctx, rounds.finish, now=time.time() + 6) == []
    assert [r["round_id"] for r in history(ctx)] == ["done"] and liveness.active(ctx) == {}
