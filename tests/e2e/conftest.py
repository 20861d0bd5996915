"""End-to-end fixtures: a real server (thread) and real Celery worker processes on real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]

# Small rounds so the loop runs in seconds on the tiny test model.
FAST_ROUND = {
    "RLHF_PPO__STEPS": "2", "RLHF_REWARD__EPOCHS": "1", "RLHF_EVAL_PROMPTS": "8", "RLHF_PPO__ROLLOUT_BATCH_SIZE": "8",
    "RLHF_PPO__MAX_NEW_TOKENS": "16", "RLHF_MIN_NEW_FEEDBACK": "1", "RLHF_ROUND_LOCK_TTL_S": "4",
    "RLHF_WORKER_METRICS_PORT": "-1", "RLHF_DEVICE": "cpu",
}


class Worker:
    """`rlhf-serve worker` in a child process (solo pool, both queues)."""

    def __init__(self, settings, tmp_path: Path, **env_overrides: str):
        env = dict(os.environ, RLHF_REDIS_URL=settings.redis_url, RLHF_KEY_PREFIX=settings.key_prefix,
                   RLHF_REGISTRY=str(settings.registry), PYTHONPATH=str(ROOT), **FAST_ROUND)
        env.update(env_overrides)
        self.log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlhf_serve.cli", "worker", "--pool=solo", "-Q", "default,gpu",
             "--loglevel=INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        return True

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


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


class Beat(Worker):
    """`rlhf-serve beat` in a child process."""

    def __init__(self, settings, tmp_path: Path, **env_overrides: str):
        env = dict(os.environ, RLHF_REDIS_URL=settings.redis_url, RLHF_KEY_PREFIX=settings.key_prefix,
                   RLHF_REGISTRY=str(settings.registry), PYTHONPATH=str(ROOT), **FAST_ROUND)
        env.update(env_overrides)
        self.log_path = tmp_path / f"beat-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlhf_serve.cli", "beat", "--loglevel=INFO",
             "--schedule", str(tmp_path / "beat-schedule")],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)


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
LENIENT_GATE = {"RLHF_GATE_MIN_JUDGE_ACCURACY": "0", "RLHF_GATE_WIN_MARGIN": "-1", "RLHF_GATE_MAX_EOS_DROP": "1",
                "RLHF_GATE_MAX_LENGTH_RATIO": "1e9", "RLHF_GATE_MIN_DISTINCT_RATIO": "0"}
