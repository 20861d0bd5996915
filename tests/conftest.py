"""Shared fixtures: real Redis (REDIS_URL), a tiny model built by the project's own SFT code,
a registry holding it, and a real gRPC server on a loopback port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from registry import Registry
from rlhf_core.settings import Settings
from tests.helpers import ServerThread, delete_prefix, register_v1, unique_prefix

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.exit(f"Redis is not reachable at {REDIS_URL} ({exc}); `make test` starts one", returncode=1)
    return REDIS_URL


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small model trained by training.sft on the shipped data (seconds, not minutes)."""
    from training.sft import SFTConfig, build_default_model
    out = tmp_path_factory.mktemp("tiny-model") / "model"
    cfg = SFTConfig(seed=0, vocab_size=512, n_layer=2, n_embd=64, n_head=2, n_positions=128, max_steps=120,
                    batch_size=32, lr=5e-3, warmup_steps=10)
    build_default_model(out, cfg, log=lambda *_: None)
    return out


@pytest.fixture
def settings(redis_url, tmp_path) -> Settings:
    prefix = unique_prefix()
    s = Settings(redis_url=redis_url, key_prefix=prefix, registry=tmp_path / "registry", port=0, metrics_port=0,
                 host="127.0.0.1", device="cpu", batch_wait_ms=20.0, insecure_admin=True)
    yield s
    delete_prefix(redis_url, prefix)


@pytest.fixture
def registry_v1(settings, tiny_model_dir) -> Registry:
    register_v1(settings, tiny_model_dir)
    return Registry(settings.registry)


@pytest.fixture
def server(settings, registry_v1):
    srv = ServerThread(settings).start()
    yield srv
    srv.stop()
