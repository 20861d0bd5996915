"""Prefilled prompts kept for reuse: a prompt asked again joins without running the model.

A prefill computes, for every prompt token, each layer's keys and values, and the logits of the first response
token. Nothing in them depends on the sampling settings, the seed or the other rows, so a prompt asked again on
the same model version (a "regenerate", a comparison call's prompt asked by the next user, the FAQ-like questions
of a support bot) can copy them instead of running the model: its first token then costs a copy and a sampling
step, not a forward pass over the prompt. Attention is causal, so the keys and values of a prompt's first n tokens
are those of any prompt that starts with the same n tokens (a shared system prompt or document, the earlier turns
of a conversation): a prompt that shares at least `min_prefix_tokens` leading tokens with a kept one runs only the
rest. Kept prompts are indexed by their leading blocks of `min_prefix_tokens` tokens (vLLM's automatic prefix caching
keeps KV blocks of 16 tokens by the hash of the prefix they end): a lookup takes the kept prompt that shares the
most whole blocks, and from it every token the two have in common.

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


def common_prefix(a: tuple[int, ...], b: tuple[int, ...], limit: int) -> int:
    """Length of the longest common prefix of `a` and `b`, at most `limit` (a bisection on slice equality)."""
    lo, hi = 0, min(len(a), len(b), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PromptCache:
    def __init__(self, max_bytes: int, min_prefix_tokens: int = 16):
        self.max_bytes = max(0, int(max_bytes))
        self.min_prefix_tokens = max(1, min_prefix_tokens)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.query_tokens = 0  # prompt tokens looked up
        self.hit_tokens = 0  # of those, tokens whose keys and values came from an entry
        self._entries: OrderedDict[Key, CachedPrompt] = OrderedDict()
        # (version, a prompt's first k x min_prefix_tokens tokens) -> the kept prompts that start so (all k)
        self._blocks: dict[Key, set[Key]] = {}

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

    def lookup(self, version: str, prompt: tuple[int, ...]) -> tuple[CachedPrompt | None, int]:
        """(the prompt's own entry, len(prompt)); else (an entry sharing the most whole blocks of `min_prefix_tokens`
        with it, and n < len(prompt) the tokens they share: its keys and values up to n are the prompt's, its logits
        are not); else (None, 0). Counts the tokens looked up and found."""
        self.query_tokens += len(prompt)
        entry = self.get(version, prompt)
        if entry is not None:
            self.hit_tokens += len(prompt)
            return entry, len(prompt)
        block = self.min_prefix_tokens
        for head in range((len(prompt) - 1) // block * block, 0, -block):  # the longest whole blocks first
            keys = self._blocks.get((version, prompt[:head]))
            if keys:  # a kept prompt starts with these `head` tokens; it may share a few more
                best = next(iter(keys))
                found = common_prefix(best[1], prompt, len(prompt) - 1)  # < len(prompt): a token is left to run
                self._entries.move_to_end(best)
                self.hit_tokens += found
                return self._entries[best], found
        return None, 0

    def put(self, version: str, prompt: tuple[int, ...], entry: CachedPrompt) -> bool:
        """Keeps `entry`, evicting the least recently used ones to stay within the budget; False (kept nothing)
        when the entry alone is larger than the budget."""
        size = entry.nbytes
        if size > self.max_bytes:
            return False
        if (version, prompt) in self._entries:
            self._drop((version, prompt))
        while self._entries and self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))  # the least recently used
        self._entries[(version, prompt)] = entry
        self.bytes += size
        for head in self._heads(version, prompt):
            self._blocks.setdefault(head, set()).add((version, prompt))
        return True

    def _heads(self, version: str, prompt: tuple[int, ...]) -> list[Key]:
        block = self.min_prefix_tokens
        return [(version, prompt[:n]) for n in range(block, len(prompt) + 1, block)]

    def _drop(self, key: Key) -> None:
        self.bytes -= self._entries.pop(key).nbytes
        for head in self._heads(*key):
            keys = self._blocks[head]
            keys.discard(key)
            if not keys:
                del self._blocks[head]
