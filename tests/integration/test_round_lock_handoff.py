"""The round lock outlives a queue wait: taking it and leaving a stage set the hand-off TTL."""

from __future__ import annotations

import time

import pytest
import redis

from rlhf_core.keys import Keys
from workers.lock import LockLost, RoundLock


@pytest.fixture
def r(settings):
    return redis.Redis.from_url(settings.redis_url)


def test_handoff_ttl_covers_the_wait_between_stages(settings, r):
    lock = RoundLock(r, Keys(settings.key_prefix).round_lock, ttl_s=0.3, handoff_ttl_s=30)
    assert lock.acquire("a")
    assert r.pttl(lock.key) > 20_000                 # the first task waits in a queue too
    with lock.held("a"):
        time.sleep(0.25)                             # the stage heartbeat holds it at the stage TTL
        assert 0 < r.pttl(lock.key) <= 300
    assert r.pttl(lock.key) > 20_000                 # handed off to the next stage
    time.sleep(0.6)                                  # twice the stage TTL: a queue wait
    lock.check("a")                                  # the next stage still owns the round
    assert lock.holder() == "a" and not lock.acquire("b")


def test_a_stage_killed_mid_run_still_frees_the_lock_quickly(settings, r):
    lock = RoundLock(r, Keys(settings.key_prefix).round_lock, ttl_s=0.3, handoff_ttl_s=30)
    assert lock.acquire("a")
    lock.check("a")                                  # what held() does first: back to the stage TTL
    time.sleep(0.5)                                  # the worker died: no heartbeat, no hand-off
    assert lock.holder() is None
    with pytest.raises(LockLost):
        lock.check("a")


def test_without_a_handoff_ttl_the_stage_ttl_applies(settings, r):
    lock = RoundLock(r, Keys(settings.key_prefix).round_lock, ttl_s=0.3)
    assert lock.acquire("a")
    with lock.held("a"):
        pass
    time.sleep(0.5)
    assert lock.holder() is None                     # the old behaviour: the queue wait loses the lock
