"""End-to-end fixtures: a real server (thread) and real Celery worker processes on real Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from rlhf_serve.local import CeleryChild


# Small rounds so the loop runs in seconds on the tiny test model.
FAST_ROUND = {
    "RLHF_PPO__STEPS": "2", "RLHF_REWARD__EPOCHS": "1", "RLHF_EVAL_PROMPTS": "8", "RLHF_PPO__ROLLOUT_BATCH_SIZE": "8",
    "RLHF_PPO__MAX_NEW_TOKENS": "16", "RLHF_MIN_NEW_FEEDBACK": "1", "RLHF_ROUND_LOCK_TTL_S": "4",
    "RLHF_WORKER_METRICS_PORT": "-1", "RLHF_DEVICE": "cpu",
}


class Worker(CeleryChild):
    """`rlhf-serve worker` in a child process (solo pool, both queues), with the small round settings."""

    def __init__(self, settings, tmp_path: Path, **env_overrides: str):
        super().__init__("worker", settings, tmp_path, env={**FAST_ROUND, **env_overrides})


@pytest.fixture
def start_worker(settings, tmp_path):
    workers: list[Worker] = []

    def start(**env) -> Worker:
        worker = Worker(settings, tmp_path, **env)
        workers.append(worker)
        return worker
    yield start
    for worker in workers:
        worker.stop()


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stream_stats(settings) -> dict:
    r = redis.Redis.from_url(settings.redis_url)
    key = settings.key_prefix + "feedback"
    groups = r.xinfo_groups(key) if r.exists(key) else []
    group = next((g for g in groups if g["name"] == b"trainers"), None)
    return {"length": r.xlen(key), "pending": group["pending"] if group else None,
            "lag": group.get("lag") if group else None}


class Beat(CeleryChild):
    """`rlhf-serve beat` in a child process."""

    def __init__(self, settings, tmp_path: Path, **env_overrides: str):
        super().__init__("beat", settings, tmp_path, env={**FAST_ROUND, **env_overrides})


@pytest.fixture
def start_beat(settings, tmp_path):
    beats: list[Beat] = []

    def start(**env) -> Beat:
        beat = Beat(settings, tmp_path, **env)
        beats.append(beat)
        return beat
    yield start
    for beat in beats:
        beat.stop()


# The gate's statistical checks off, for tests of the loop's plumbing (not of the gate: see
# tests/integration/test_gate_round.py): the round promotes on the reward-gain and KL checks alone.
LENIENT_GATE = {"RLHF_GATE_MIN_JUDGE_ACCURACY": "0", "RLHF_GATE_WIN_MARGIN": "-1", "RLHF_GATE_MIN_WIN_RATE": "0",
                "RLHF_GATE_MAX_EOS_DROP": "1",
                "RLHF_GATE_MAX_LENGTH_RATIO": "1e9", "RLHF_GATE_MIN_DISTINCT_RATIO": "0"}
