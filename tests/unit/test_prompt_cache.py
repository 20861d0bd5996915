"""The prompt cache's bookkeeping: least recently used out first, within a byte budget, per model version."""

from __future__ import annotations

import torch

from service.prompt_cache import CachedPrompt, PromptCache, common_prefix


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


def test_common_prefix_against_a_plain_loop():
    import random
    rng = random.Random(0)
    for _ in range(500):
        a = tuple(rng.randrange(3) for _ in range(rng.randrange(12)))
        b = tuple(rng.randrange(3) for _ in range(rng.randrange(12)))
        limit = rng.randrange(14)
        naive = 0
        while naive < min(len(a), len(b), limit) and a[naive] == b[naive]:
            naive += 1
        assert common_prefix(a, b, limit) == naive


def test_lookup_finds_the_prompt_else_the_kept_one_sharing_the_most_blocks_of_its_version():
    cache = PromptCache(10**6, min_prefix_tokens=2)  # blocks of 2 tokens
    cache.put("v1", (1, 2, 3, 4), entry(4))
    cache.put("v1", (1, 2, 3, 9, 9), entry(5))
    cache.put("v2", (1, 2, 3, 4, 5, 6), entry(6))
    assert cache.lookup("v1", (1, 2, 3, 4))[1] == 4  # itself: its logits too
    assert cache.lookup("v1", (1, 2, 3, 4, 5, 6, 7))[1] == 4  # two blocks shared with one, this version's only
    assert cache.lookup("v1", (1, 2, 3, 9))[1] == 3  # one block, then a token more: the last must run (its logits)
    assert cache.lookup("v1", (1, 7, 7, 7)) == (None, 0)  # 1 shared token < min_prefix_tokens
    assert (cache.query_tokens, cache.hit_tokens) == (4 + 7 + 4 + 4, 4 + 4 + 3)


def test_an_evicted_or_replaced_entry_is_no_prefix_any_more():
    size = entry(5).nbytes
    cache = PromptCache(2 * size, min_prefix_tokens=3)
    cache.put("v1", (1, 2, 3, 4, 5), entry(5))
    cache.put("v1", (1, 2, 3, 4, 5), entry(5))  # replaced: indexed once
    cache.put("v1", (7, 7, 7, 7, 7), entry(5))
    cache.put("v1", (8, 8, 8, 8, 8), entry(5))  # evicts (1, 2, 3, 4, 5)
    assert cache.lookup("v1", (1, 2, 3, 4, 5, 6)) == (None, 0)
    assert cache.lookup("v1", (7, 7, 7, 0))[1] == 3 and cache.bytes == 2 * size


def test_a_lookup_among_many_prompts_sharing_a_long_head_stays_cheap():
    """3,000 kept prompts behind one 32-token system prompt: a lookup reads block prefixes, not every prompt."""
    import time
    cache = PromptCache(10**9, min_prefix_tokens=16)
    head = tuple(range(32))
    for i in range(3000):
        cache.put("v1", head + (1000 + i, 7, 7, 7), entry(1))
    started = time.perf_counter()
    for i in range(100):
        assert cache.lookup("v1", head + (5000 + i, 8))[1] == 32
    assert (time.perf_counter() - started) / 100 < 0.002
