"""`rlhf-serve bootstrap`: registers version 1 (the built-in SFT model, or a local HF directory)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import redis

from registry import Registry
from registry.pointer import current_version, set_current
from rlhf.v1 import records_pb2
from rlhf_serve.keys import Keys
from rlhf_serve.settings import Settings

log = logging.getLogger(__name__)


def bootstrap(settings: Settings, sft_config=None) -> str:
    """Idempotent: returns the current version, building and registering one if none exists."""
    registry = Registry(settings.registry)
    r = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    existing = current_version(r, keys, registry)
    if existing:
        log.info("registry %s already serves %s; nothing to do", registry.root, existing)
        return existing
    if registry.list_versions():  # versions exist but none promoted: point at the first
        version = registry.list_versions()[0]
        set_current(r, keys, registry, version, "bootstrap")
        return version
    started = time.perf_counter()
    manifest = records_pb2.ModelManifest()
    with tempfile.TemporaryDirectory() as tmp:
        if settings.base_model:
            src, manifest.base_model = Path(settings.base_model), str(settings.base_model)
            description = f"bootstrap: local model {settings.base_model}"
            _check_hf_dir(src)
        else:
            from training.sft import SFTConfig, build_default_model
            src, manifest.base_model = Path(tmp) / "model", "builtin-sft"
            log.info("building the built-in default model (tokenizer + SFT); this takes a few minutes")
            metrics = build_default_model(src, sft_config or SFTConfig(seed=settings.seed))
            description = f"bootstrap: built-in SFT model, final loss {metrics.get('train_loss', 0):.3f}"
        manifest.training.description = description
        manifest.training.seconds = time.perf_counter() - started
        manifest.promotion.promoted = True
        manifest.promotion.reason = "bootstrap: the SFT reference"
        manifest.promotion.decided_at.GetCurrentTime()
        published = registry.publish(src, manifest)
    set_current(r, keys, registry, published.version, "bootstrap")
    log.info("registered %s (%s) in %.0fs", published.version, description, manifest.training.seconds)
    return published.version


def _check_hf_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise SystemExit(f"--base-model {path}: not a Hugging Face model directory (no config.json)")
