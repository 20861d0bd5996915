"""LoRA versions in a serving process: each base loaded once, adapters hot-swapped onto it.

A LoRA version's registry directory holds only its peft adapter (megabytes); its manifest names
the base version (``adapter_base_version``). The bank keeps one copy of each base and serves an
adapter version as a *working copy* of that base:

- ``merged`` (the default for the current version): a module tree that shares every tensor of the
  base except the adapted ones (e.g. GPT-2's ``c_attn``), which hold W + (alpha/r) B A (peft's
  ``merge_and_unload(safe_merge=True)``, which writes new tensors and so never touches the base).
  Decodes at the base's speed; costs the adapted weights.
- ``unmerged``: the same shared tree with peft's LoRA layers left in (costs only the adapter;
  decoding pays the two small extra matmuls per adapted layer).

Measured on the 86M GPT-2 shape on CPU (benchmarks/results/ppo_speed/result.json "swap"): decode
speed base / merged / unmerged 65 / 94 / 87 tokens/s (no unmerged penalty visible through the
noise of a shared machine), load 0.56 s merged vs 0.025 s unmerged. So the pool merges the current version on CUDA
(where the extra LoRA kernels per layer cost more) and serves adapters unmerged on CPU; pinned
versions are always unmerged.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from registry import Registry
from service.decoder import LoadedModel

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json")


def shared_copy(model: nn.Module) -> nn.Module:
    """A new module tree whose parameters and buffers share storage with ``model``'s (no weight copy).

    Each parameter is a new ``Parameter`` object over the same tensor, so replacing one in the copy
    (as a safe merge does) leaves ``model`` untouched; tied weights stay tied.
    """
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.data, requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b
    return copy.deepcopy(model, memo)


def adapter_bytes(path: Path) -> int:
    """Bytes of the adapter files read when loading the version at ``path``."""
    return sum((path / f).stat().st_size for f in ADAPTER_FILES if (path / f).is_file())


def working_copy(base: nn.Module, adapter_dir: Path, merged: bool) -> nn.Module:
    """``base`` + the adapter at ``adapter_dir``: merged into a working copy, or as peft layers."""
    from peft import PeftModel

    tree = shared_copy(base)
    peft_model = PeftModel.from_pretrained(tree, str(adapter_dir), is_trainable=False)
    model = peft_model.merge_and_unload(safe_merge=True) if merged else peft_model
    return model.eval()


class AdapterBank:
    """One resident copy per base version, and working copies of adapter versions on top."""

    def __init__(self, registry: Registry, device: torch.device,
                 load_full: Callable[[Path, str, torch.device], LoadedModel]):
        self.registry = registry
        self.device = device
        self.load_full = load_full
        self.bases: dict[str, LoadedModel] = {}
        self.loaded_adapters: dict[str, str] = {}  # adapter version -> its base version
        self.last_load_bytes = 0
        self.last_load_seconds = 0.0
        self._lock = threading.Lock()

    @property
    def base_copies(self) -> int:
        """How many base models are resident (one per base version in use)."""
        return len(self.bases)

    def base(self, base_version: str) -> LoadedModel:
        """The resident base (verified and loaded on first use)."""
        with self._lock:
            lm = self.bases.get(base_version)
            if lm is None:
                manifest = self.registry.verify(base_version)
                if manifest.adapter_base_version:
                    raise ValueError(f"{base_version} is itself an adapter version, not a base")
                lm = self.load_full(self.registry.path(base_version), base_version, self.device)
                self.bases[base_version] = lm
                log.info("loaded base %s on %s", base_version, self.device)
            return lm

    def load(self, version: str, base_version: str, merged: bool = True) -> LoadedModel:
        """The adapter version ``version`` on its base (checksums already verified by the caller)."""
        started = time.perf_counter()
        base = self.base(base_version)
        path = self.registry.path(version)
        model = working_copy(base.model, path, merged)
        self.last_load_bytes = adapter_bytes(path)
        self.last_load_seconds = time.perf_counter() - started
        with self._lock:
            self.loaded_adapters[version] = base_version
        log.info("adapter %s on base %s (%s): %d bytes in %.3fs", version, base_version,
                 "merged" if merged else "unmerged", self.last_load_bytes, self.last_load_seconds)
        return dataclasses.replace(base, version=version, model=model)

    def drop_unused(self, loaded_versions: list[str]) -> None:
        """Forget adapters no longer loaded, and bases no loaded version runs on any more."""
        with self._lock:
            for version in [v for v in self.loaded_adapters if v not in loaded_versions]:
                del self.loaded_adapters[version]
            in_use = set(self.loaded_adapters.values()) | set(loaded_versions)
            for name in [b for b in self.bases if b not in in_use]:
                del self.bases[name]
