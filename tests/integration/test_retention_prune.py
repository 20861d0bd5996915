"""`rlhf-serve models prune` on a real registry and Redis pointer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from registry import Registry
from rlhf_core.keys import Keys
from tests.helpers import point_at, publish_model

ROOT = Path(__file__).resolve().parents[2]


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_serve.cli", "models", *args, "--redis-url", settings.redis_url,
                           "--registry", str(settings.registry), "--key-prefix", settings.key_prefix],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_prune_dry_run_then_delete(settings, tiny_model_dir):
    registry = Registry(settings.registry)
    v1 = publish_model(registry, tiny_model_dir)
    v2 = publish_model(registry, tiny_model_dir, parent=v1, promoted=False)   # refused
    v3 = publish_model(registry, tiny_model_dir, parent=v1, promoted=True)
    v4 = publish_model(registry, tiny_model_dir, parent=v3, promoted=False)   # refused, newest
    point_at(settings, v3)

    dry = cli(settings, "prune", "--dry-run", "--keep-refused", "0")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {v2}" in dry.stdout and "3 kept, 1 to delete" in dry.stdout
    assert registry.list_versions() == [v1, v2, v3, v4]  # nothing deleted by a dry run

    r = redis.Redis.from_url(settings.redis_url)
    r.set(Keys(settings.key_prefix).round_lock, "some-round")
    busy = cli(settings, "prune", "--keep-refused", "0")
    assert busy.returncode == 1 and "round is running" in busy.stderr
    r.delete(Keys(settings.key_prefix).round_lock)

    done = cli(settings, "prune", "--keep-refused", "0")
    assert done.returncode == 0, done.stderr
    assert f"deleted {v2}" in done.stdout
    assert registry.list_versions() == [v1, v3, v4]
    registry.verify(v3)  # what is kept is intact
    assert not list(registry.tmp_dir.glob("deleted-*"))
    v5 = publish_model(registry, tiny_model_dir, parent=v3)
    assert v5 == "v0005"  # numbers are never reused
