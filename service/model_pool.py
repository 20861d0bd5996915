"""Model versions held in memory: the current one plus a few pinned ones (LRU).

`current` is a plain attribute: swapping it is one reference assignment, so a batch that already
took the old LoadedModel finishes on it while the next batch gets the new one.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from registry import ChecksumError, Registry
from registry.probe import UnloadableVersion, forward_check, load_checked
from service.decoder import LoadedModel
from training.devices import serving_dtype

log = logging.getLogger(__name__)


def load_model_dir(path, version: str, device: torch.device) -> LoadedModel:
    """Loads a Hugging Face causal LM and its tokenizer from a local directory (strictly: every
    weight present with its shape) and runs it once. Raises registry.probe.UnloadableVersion."""
    model, tokenizer = load_checked(path, version, device, serving_dtype(device))
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
    def __init__(self, registry: Registry, device: torch.device, capacity: int = 3):
        self.registry = registry
        self.device = device
        self.capacity = max(1, capacity)
        self.current: LoadedModel | None = None
        self.state = ServingState()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._failed: dict[str, tuple] = {}  # version -> (fingerprint, error) of failed pinned loads

    def get(self, version: str) -> LoadedModel | None:
        """A loaded version, or None (call `load` off the event loop)."""
        with self._lock:
            lm = self._loaded.get(version)
            if lm is not None:
                self._loaded.move_to_end(version)
            return lm

    def load(self, version: str) -> LoadedModel:
        """Verifies checksums, loads and runs a version once (blocking). Raises InvalidVersionName,
        VersionNotFound, ChecksumError or UnloadableVersion."""
        lm = self.get(version)
        if lm is not None:
            return lm
        with self._load_lock:  # one load at a time; a second caller for the same version waits for it
            lm = self.get(version)
            if lm is not None:
                return lm
            self.registry.verify(version)
            lm = load_model_dir(self.registry.path(version), version, self.device)
            with self._lock:
                self._loaded[version] = lm
                self._evict()
        log.info("loaded model %s on %s", version, self.device)
        return lm

    def load_pinned(self, version: str) -> LoadedModel:
        """`load` for a version a client pins: one that failed is refused again at once, without
        another checksum-and-load cycle, until its files change."""
        fingerprint = self.registry.fingerprint(version)
        failed = self._failed.get(version)
        if failed is not None and failed[0] == fingerprint:
            raise type(failed[1])(str(failed[1]))
        try:
            return self.load(version)
        except (ChecksumError, UnloadableVersion) as exc:
            self._failed[version] = (fingerprint, exc)
            raise

    def set_current(self, lm: LoadedModel) -> None:
        with self._lock:
            self._loaded[lm.version] = lm
            self.current = lm
            self._evict()

    def _evict(self) -> None:
        while len(self._loaded) > self.capacity:
            for version in self._loaded:
                if self.current is None or version != self.current.version:
                    del self._loaded[version]
                    break
            else:
                return
