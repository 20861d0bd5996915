"""The prompt cache's bookkeeping: least recently used out first, within a byte budget, per model version."""

from __future__ import annotations

import torch

from service.prompt_cache import CachedPrompt, PromptCache


def entry(tokens: int, layers: int = 2) -> CachedPrompt:
    kv = tuple(torch.zeros(1, 2, tokens, 4) for _ in range(layers))  # (1, H, T, D) float32: 32 bytes a token
    return CachedPrompt(keys=kv, values=kv, logits=torch.zeros(8))  # 32 bytes of logits


def test_an_entry_counts_its_keys_values_and_logits():
    assert entry(3).nbytes == 2 * 2 * (2 * 3 * 4) * 4 + 8 * 4


def test_least_recently_used_entries_leave_first_and_the_budget_holds():
    size = entry(3).nbytes
    cache = PromptCache(3 * size)
    for p in [(1,), (2,), (3,)]:
        assert cache.put("v1", p, entry(3))
    assert cache.get("v1", (1,)) is not None  # (1,) is now the most recently used
    cache.put("v1", (4,), entry(3))
    assert cache.get("v1", (2,)) is None  # the oldest unused one left
    assert [cache.get("v1", p) is not None for p in [(1,), (3,), (4,)]] == [True, True, True]
    assert len(cache) == 3 and cache.bytes == 3 * size <= cache.max_bytes
    assert (cache.hits, cache.misses) == (4, 1)


def test_versions_do_not_share_entries():
    cache = PromptCache(10**6)
    cache.put("v1", (5, 6), entry(2))
    assert cache.get("v2", (5, 6)) is None and cache.get("v1", (5, 6)) is not None


def test_an_entry_larger_than_the_budget_is_not_kept_and_evicts_nothing():
    cache = PromptCache(entry(4).nbytes)
    assert cache.put("v1", (1,), entry(4))
    assert not cache.put("v1", (2,), entry(5))
    assert cache.get("v1", (1,)) is not None and len(cache) == 1


def test_putting_a_prompt_again_replaces_it_without_counting_it_twice():
    cache = PromptCache(10**6)
    cache.put("v1", (1,), entry(2))
    cache.put("v1", (1,), entry(3))
    assert len(cache) == 1 and cache.bytes == entry(3).nbytes


def test_a_zero_budget_is_off():
    cache = PromptCache(0)
    assert not cache.enabled and not cache.put("v1", (1,), entry(1)) and len(cache) == 0
