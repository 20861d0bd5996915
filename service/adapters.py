"""LoRA versions in a serving process: each base loaded once, adapters hot-swapped onto it.

A LoRA version's registry directory holds only its peft adapter (megabytes); its manifest names
the base version (``adapter_base_version``). The bank keeps one copy of each base and serves an
adapter version as a *working copy* of that base:

- ``merged`` (the default for the current version): a module tree that shares every module of the
  base except the adapted ones and their parents (``adapted_copy``: shallow copies, so building it
  costs a few dozen small objects), and every tensor except the adapted weights (e.g. GPT-2's
  ``c_attn``), which hold W + (alpha/r) B A (peft's ``merge_and_unload(safe_merge=True)``, which
  writes new tensors and so never touches the base).
  Decodes at the base's speed; costs the adapted weights.
- ``unmerged``: the same shared tree with peft's LoRA layers left in (costs only the adapter;
  decoding pays the two small extra matmuls per adapted layer).

Measured on the 86M GPT-2 shape on CPU (benchmarks/results/ppo_speed/result.json
"swap_earlier_run"): decode speed base / merged / unmerged 65 / 94 / 87 tokens/s (no unmerged
penalty visible through the noise of a shared machine), load 0.56 s merged vs 0.025 s unmerged.
A base the pool already serves is adopted as it is (verified when it loaded), so a swap never
re-hashes the base's weights. So the pool merges the current version on CUDA
(where the extra LoRA kernels per layer cost more) and serves adapters unmerged on CPU; pinned
versions are always unmerged.
"""

from __future__ import annotations

import collections
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


def _module_copy(module: nn.Module, children: dict[str, nn.Module | None]) -> nn.Module:
    """A shallow copy of ``module`` with its own child and parameter dicts (new ``Parameter`` objects
    over the same tensors): replacing a child or a parameter's data in it leaves ``module`` as it was."""
    new = copy.copy(module)
    new._modules = children
    new._parameters = {k: None if p is None else nn.Parameter(p.data, requires_grad=False)
                       for k, p in module._parameters.items()}
    new._buffers = dict(module._buffers)
    return new


def adapted_copy(model: nn.Module, is_target: Callable[[str], object]) -> nn.Module:
    """A working tree for an adapter: the modules named by ``is_target`` and those on the way to them
    are shallow copies (``_module_copy``), every other module is ``model``'s own object.

    Replacing a target in the copy (peft injecting a LoRA layer) or merging into its weight leaves
    ``model`` untouched, at the cost of a few dozen small objects instead of the whole tree
    (``shared_copy``), which was a third of an adapter swap's CPU time on the 86M shape. Falls back
    to ``shared_copy`` when a target's parameter is also used elsewhere (tied weights).
    """
    targets = {name: m for name, m in model.named_modules() if name and is_target(name)}
    users = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    if any(users[id(p)] > 1 for m in targets.values() for p in m.parameters()):
        return shared_copy(model)
    on_path = {".".join(parts[:i]) for parts in (n.split(".") for n in targets) for i in range(1, len(parts) + 1)}

    def copy_along(module: nn.Module, prefix: str) -> nn.Module:
        children = {}
        for name, child in module._modules.items():
            key = f"{prefix}{name}"
            children[name] = copy_along(child, key + ".") if child is not None and key in on_path else child
        return _module_copy(module, children)

    return copy_along(model, "")


def adapter_bytes(path: Path) -> int:
    """Bytes of the adapter files read when loading the version at ``path``."""
    return sum((path / f).stat().st_size for f in ADAPTER_FILES if (path / f).is_file())


def working_copy(base: nn.Module, adapter_dir: Path, merged: bool) -> nn.Module:
    """``base`` + the adapter at ``adapter_dir``: merged into a working copy, or as peft layers."""
    from peft import PeftConfig, PeftModel
    from peft.tuners.tuners_utils import check_target_module_exists

    config = PeftConfig.from_pretrained(str(adapter_dir))
    tree = adapted_copy(base, lambda key: check_target_module_exists(config, key))
    peft_model = PeftModel.from_pretrained(tree, str(adapter_dir), config=config, is_trainable=False)
    model = peft_model.merge_and_unload(safe_merge=True) if merged else peft_model
    return model.eval()


class AdapterBank:
    """One resident copy per base version, and working copies of adapter versions on top."""

    def __init__(self, registry: Registry, device: torch.device,
                 load_full: Callable[[Path, str, torch.device], LoadedModel],
                 resident: Callable[[str], LoadedModel | None] = lambda _version: None):
        self.registry = registry
        self.device = device
        self.load_full = load_full
        self.resident = resident  # a full version the process already serves (verified when it loaded)
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
        """The resident base: a full version already served (its checksums were verified when it
        loaded: not hashed again, which cost a swap ~0.4 s CPU on the 86M shape), else verified and
        loaded on first use."""
        with self._lock:
            lm = self.bases.get(base_version)
            if lm is None:
                if self.registry.manifest(base_version).adapter_base_version:
                    raise ValueError(f"{base_version} is itself an adapter version, not a base")
                lm = self.resident(base_version)
                if lm is None:
                    self.registry.verify(base_version)
                    lm = self.load_full(self.registry.path(base_version), base_version, self.device)
                    log.info("loaded base %s on %s", base_version, self.device)
                lm.model.requires_grad_(False)  # serving needs no gradients; working copies share its modules
                self.bases[base_version] = lm
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
