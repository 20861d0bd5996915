"""A throw-away stack for benchmarks/faults.py: its own redis-server, a registry, a server, workers.

Everything runs against a private `redis-server` on a free port (AOF with fsync always), never
the shared one, so the benchmark may kill and restart it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from benchmarks.learning.stack import CACHE, register_sft
from rlhf_serve.local import CeleryChild

TINY_FAST_ROUND = {
    "RLHF_PPO__STEPS": "500", "RLHF_REWARD__EPOCHS": "1", "RLHF_EVAL_PROMPTS": "8", "RLHF_PPO__ROLLOUT_BATCH_SIZE": "8",
    "RLHF_PPO__MAX_NEW_TOKENS": "16", "RLHF_MIN_NEW_FEEDBACK": "1", "RLHF_ROUND_LOCK_TTL_S": "4",
    "RLHF_WORKER_METRICS_PORT": "-1", "RLHF_DEVICE": "cpu", "RLHF_SCHEDULE_S": "3600",
    "RLHF_ROUND_HEARTBEAT_TIMEOUT_S": "10", "RLHF_ROUND_REAP_INTERVAL_S": "2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_dir() -> Path:
    """The tests' tiny SFT model (seconds to build, fast to serve and train), cached."""
    from training.sft import SFTConfig, build_default_model
    out = CACHE / "tiny-faults"
    if not (out / "config.json").is_file():
        cfg = SFTConfig(seed=0, vocab_size=512, n_layer=2, n_embd=64, n_head=2, n_positions=128, max_steps=120,
                        batch_size=32, lr=5e-3, warmup_steps=10)
        tmp = CACHE / f"tiny-faults.tmp-{os.getpid()}"
        build_default_model(tmp, cfg, log=lambda *_: None)
        tmp.rename(out)
    return out


class RedisProcess:
    """A private redis-server with AOF (appendfsync always) in `data_dir`, stoppable with kill -9."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping():
                    return self
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class Proc(CeleryChild):
    """`rlhf-serve worker` or `beat` in a child process on the stack's Redis and registry."""

    def __init__(self, kind: str, settings, log_dir: Path, **env: str):
        super().__init__(kind, settings, log_dir, env={**TINY_FAST_ROUND, **env})


__all__ = ["Proc", "RedisProcess", "TINY_FAST_ROUND", "free_port", "register_sft", "tiny_model_dir"]
