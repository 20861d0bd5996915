"""Model versions held in memory: the current one plus a few pinned ones (LRU).

`current` is a plain attribute: swapping it is one reference assignment, so a batch that already
took the old LoadedModel finishes on it while the next batch gets the new one.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from registry import ChecksumError, Registry
from registry.probe import UnloadableVersion, forward_check, load_checked
from service.adapters import AdapterBank
from service.decoder import LoadedModel
from service.packed_linear import pack_linear_layers
from training.devices import serving_dtype

log = logging.getLogger(__name__)


def load_model_dir(path, version: str, device: torch.device, packed_weights: bool = True) -> LoadedModel:
    """Loads a Hugging Face causal LM and its tokenizer from a local directory (strictly: every
    weight present with its shape) and runs it once. Raises registry.probe.UnloadableVersion.
    ``packed_weights``: on the CPU, decoding steps use oneDNN-packed linear weights (service/packed_linear.py)."""
    model, tokenizer = load_checked(path, version, device, serving_dtype(device))
    if packed_weights and device.type == "cpu":
        pack_linear_layers(model)  # before the check: its few-token forward runs the packed path, as serving will
    forward_check(model, tokenizer, version)
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    max_context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 2048)
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return LoadedModel(version=version, model=model, tokenizer=tokenizer, device=device,
                       max_context=int(max_context), eos_ids=frozenset(eos_ids), pad_id=int(pad_id),
                       cache_arg=cache_arg)


@dataclass
class ServingState:
    """What this process serves relative to the deployment's pointer (set by the ModelWatcher)."""

    pointer: str | None = None  # the version the pointer names, as last read
    refused_reason: str = ""  # why the pointer's version is not served (empty when it is)
    fallback: bool = False  # serving an ancestor because the pointer's version could not load


class ModelPool:
    def __init__(self, registry: Registry, device: torch.device, capacity: int = 3, packed_weights: bool = True):
        self.registry = registry
        self.device = device
        self.capacity = max(1, capacity)
        self.load_full = functools.partial(load_model_dir, packed_weights=packed_weights)  # RLHF_CPU_PACKED_WEIGHTS
        self.current: LoadedModel | None = None
        self.state = ServingState()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._failed: dict[str, tuple] = {}  # version -> (fingerprint, error) of failed pinned loads
        self.adapters = AdapterBank(registry, device, self.load_full, self._resident)  # LoRA: one base each (issue 7)
        self._unmerged: set[str] = set()
        # Merge the current LoRA version into a working copy on CUDA only: on CPU the measured decode
        # speed of unmerged adapters is the same (within noise) and the swap is ~14x faster
        # (benchmarks/results/ppo_speed/result.json "swap_earlier_run").
        self.merge_current = device.type == "cuda"

    def get(self, version: str) -> LoadedModel | None:
        """A loaded version, or None (call `load` off the event loop)."""
        with self._lock:
            lm = self._loaded.get(version)
            if lm is not None:
                self._loaded.move_to_end(version)
            return lm

    def load(self, version: str, merged: bool | None = None) -> LoadedModel:
        """Verifies checksums, loads and runs a version once (blocking). Raises InvalidVersionName,
        VersionNotFound, ChecksumError or UnloadableVersion.

        A LoRA version loads as its adapter on the resident base: merged into a working copy
        (``merged``: decodes at full speed; the current version) or unmerged (costs only the
        adapter; pinned versions). ``None``: merged on CUDA, unmerged on CPU (``merge_current``)."""
        merged = self.merge_current if merged is None else merged
        lm = self.get(version)
        if lm is not None and (not merged or version not in self._unmerged):
            return lm
        with self._load_lock:  # one load at a time; a second caller for the same version waits for it
            lm = self.get(version)
            if lm is not None and (not merged or version not in self._unmerged):
                return lm
            manifest = self.registry.verify(version)
            if manifest.adapter_base_version:
                lm = self.adapters.load(version, manifest.adapter_base_version, merged)
            else:
                lm = self.adapters.bases.get(version) or self.load_full(self.registry.path(version), version,
                                                                        self.device)
            with self._lock:
                self._loaded[version] = lm
                (self._unmerged.discard if merged else self._unmerged.add)(version)
                self._evict()
                loaded = list(self._loaded)
        self.adapters.drop_unused(loaded)  # outside our lock: the bank's lock is taken first elsewhere
        log.info("loaded model %s on %s", version, self.device)
        return lm

    def load_pinned(self, version: str) -> LoadedModel:
        """`load` for a version a client pins (a LoRA version unmerged: it costs only the adapter);
        one that failed is refused again at once, without another checksum-and-load cycle, until
        its files change."""
        fingerprint = self.registry.fingerprint(version)
        failed = self._failed.get(version)
        if failed is not None and failed[0] == fingerprint:
            raise type(failed[1])(str(failed[1]))
        try:
            return self.load(version, merged=False)
        except (ChecksumError, UnloadableVersion) as exc:
            self._failed[version] = (fingerprint, exc)
            raise

    def _resident(self, version: str) -> LoadedModel | None:
        """A base for the adapter bank: the full version ``version`` if this pool already holds it."""
        with self._lock:
            lm = self._loaded.get(version)
        return lm if lm is not None and version not in self.adapters.loaded_adapters else None

    @property
    def base_copies(self) -> int:
        """Full-weight models resident (full versions and LoRA bases, each counted once)."""
        with self._lock:
            full = {id(lm.model) for v, lm in self._loaded.items() if v not in self.adapters.loaded_adapters}
        return len(full | {id(b.model) for b in list(self.adapters.bases.values())})

    def set_current(self, lm: LoadedModel) -> None:
        with self._lock:
            self._loaded[lm.version] = lm
            self.current = lm
            self._evict()
            loaded = list(self._loaded)
        self.adapters.drop_unused(loaded)

    def _evict(self) -> None:
        while len(self._loaded) > self.capacity:
            for version in self._loaded:
                if self.current is None or version != self.current.version:
                    del self._loaded[version]
                    self._unmerged.discard(version)
                    break
            else:
                return
