"""Prefilled prompts kept for reuse: a prompt asked again joins without running the model.

A prefill computes, for every prompt token, each layer's keys and values, and the logits of the first response
token. Nothing in them depends on the sampling settings, the seed or the other rows, so a prompt asked again on
the same model version (a "regenerate", a comparison call's prompt asked by the next user, the FAQ-like questions
of a support bot) can copy them instead of running the model: its first token then costs a copy and a sampling
step, not a forward pass over the prompt (vLLM's automatic prefix caching does this per block of shared prefix;
this cache matches whole prompts only).

`PromptCache` is an LRU of such entries keyed by (model version, prompt token ids), bounded by the bytes its
tensors hold (`RLHF_PROMPT_CACHE_MB`; 0 turns it off). Versions are immutable, so an entry never goes stale; the
entries of a version no longer served age out. Used by the engine's decode thread only (no locking).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

Key = tuple[str, tuple[int, ...]]


@dataclass(frozen=True)
class CachedPrompt:
    """One prompt's prefill: per layer (1, H, T, D) keys and values of its T tokens, and the (V,) next-token logits."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    logits: torch.Tensor

    @property
    def nbytes(self) -> int:
        tensors = (*self.keys, *self.values, self.logits)
        return sum(t.numel() * t.element_size() for t in tensors)


class PromptCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, CachedPrompt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, version: str, prompt: tuple[int, ...]) -> CachedPrompt | None:
        """The prompt's entry (now the most recently used), or None; counts the hit or miss."""
        entry = self._entries.get((version, prompt))
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end((version, prompt))
        self.hits += 1
        return entry

    def put(self, version: str, prompt: tuple[int, ...], entry: CachedPrompt) -> bool:
        """Keeps `entry`, evicting the least recently used ones to stay within the budget; False (kept nothing)
        when the entry alone is larger than the budget."""
        size = entry.nbytes
        if size > self.max_bytes:
            return False
        old = self._entries.pop((version, prompt), None)
        if old is not None:
            self.bytes -= old.nbytes
        while self._entries and self.bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes
        self._entries[(version, prompt)] = entry
        self.bytes += size
        return True
