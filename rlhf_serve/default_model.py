"""`rlhf-serve bootstrap`: registers version 1 (the built-in SFT model, or a local HF directory)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from registry.operations import Operations
from registry.pointer import current_version
from rlhf_core.settings import Settings

log = logging.getLogger(__name__)


def bootstrap(settings: Settings, sft_config=None) -> str:
    """Idempotent: returns the current version, building and registering one if none exists."""
    with Operations(settings) as ops:
        return _bootstrap(ops, settings, sft_config)


def _bootstrap(ops: Operations, settings: Settings, sft_config) -> str:
    registry = ops.registry
    existing = current_version(ops.redis, ops.keys, registry)
    if existing:
        log.info("registry %s already serves %s; nothing to do", registry.root, existing)
        return existing
    if registry.list_versions():  # versions exist but none promoted: point at the first
        version = registry.list_versions()[0]
        ops.move_pointer(version, "bootstrap")
        return version
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if settings.base_model:
            src, base_model = Path(settings.base_model), str(settings.base_model)
            description = f"bootstrap: local model {settings.base_model}"
            _check_hf_dir(src)
        else:
            from training.sft import SFTConfig, build_default_model
            src, base_model = Path(tmp) / "model", "builtin-sft"
            log.info("building the built-in default model (tokenizer + SFT); this takes a few minutes")
            metrics = build_default_model(src, sft_config or SFTConfig(seed=settings.seed))
            description = f"bootstrap: built-in SFT model, final loss {metrics.get('train_loss', 0):.3f}"
        seconds = time.perf_counter() - started
        version = ops.register_reference(src, base_model, description, "bootstrap", seconds=seconds)
    log.info("registered %s (%s) in %.0fs", version, description, seconds)
    return version


def _check_hf_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise SystemExit(f"--base-model {path}: not a Hugging Face model directory (no config.json)")
