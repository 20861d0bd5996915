"""A prompt asked again on the same version joins by a copy from the prompt cache, and decodes as if it had run."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from service.decoder import Row, RowBatch
from service.engine import Engine, Job
from service.metrics import Metrics
from service.prompt_cache import PromptCache
from service.sampling import SamplingSpec
from tests.integration.test_engine import NEVER, PROMPTS, load, prompt_ids as ids


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load(tiny_model_dir, "v0001")


@dataclasses.dataclass
class Prefilled:
    """A batch's KV cache right after its prefill: per layer (keys, values) (B, H, W, D), and its (B, W + 1) mask."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor


def rows(lm, plan: list[tuple[str | list[int], int]]) -> list[Row]:
    """(prompt or its token ids, seed) per row, 10 sampled tokens each."""
    return [Row(prompt_ids=ids(lm, p) if isinstance(p, str) else p, on_delta=lambda _d: None, is_cancelled=lambda: False,
                spec=SamplingSpec(max_new_tokens=10, temperature=1.0, seed=seed, stop=NEVER))
            for p, seed in plan]


def decode(lm, plan, cache: PromptCache | None) -> tuple[int, list[list[int]], Prefilled]:
    """Prefills the rows (with `cache`), keeps the batch's cache after prefill, then decodes it to the end."""
    batch, out = RowBatch(lm), rows(lm, plan)
    ran = batch.prefill(out, True, cache)
    after_prefill = Prefilled([(layer.keys.clone(), layer.values.clone()) for layer in batch.cache.layers],
                              batch.mask.clone())
    while batch.rows:
        batch.step()
        batch.release()
    return ran, [r.tokens for r in out], after_prefill


def test_prompts_from_the_cache_decode_as_if_they_had_run(lm):
    cache = PromptCache(64 * 2**20)
    first = [(PROMPTS[0], 1), (PROMPTS[1], 2)]
    ran, _, _ = decode(lm, first, cache)
    assert ran == len(ids(lm, PROMPTS[0])) + len(ids(lm, PROMPTS[1])) and len(cache) == 2
    # two cached prompts (one twice), one new: only the new one runs
    mixed = [(PROMPTS[1], 2), (PROMPTS[2], 3), (PROMPTS[0], 1), (PROMPTS[0], 4)]
    ran, tokens, kv = decode(lm, mixed, cache)
    plain_ran, plain_tokens, plain_kv = decode(lm, mixed, None)
    assert ran == len(ids(lm, PROMPTS[2])) and plain_ran == ran + len(ids(lm, PROMPTS[0])) + len(ids(lm, PROMPTS[1]))
    assert tokens == plain_tokens  # each row's seed gives the same text, copied or run
    assert_same_prefill(kv, plain_kv)  # the same keys and values on the prompts' columns, up to float rounding
    assert len(cache) == 3 and (cache.hits, cache.misses) == (2, 3)


def assert_same_prefill(kv, plain_kv) -> None:
    assert torch.equal(kv.mask, plain_kv.mask)
    real = kv.mask[:, :-1].bool()  # (B, W) prompt tokens
    for (k, v), (pk, pv) in zip(kv.kv, plain_kv.kv):
        k, v, pk, pv = (t.transpose(1, 2)[real] for t in (k, v, pk, pv))  # (tokens, H, D)
        assert torch.allclose(k, pk, atol=1e-5) and torch.allclose(v, pv, atol=1e-5)


def test_a_prompt_that_starts_like_a_kept_one_runs_only_the_rest(lm):
    """Attention is causal: a kept prompt's first n tokens' keys and values are those of any prompt starting with
    them. Longer (the earlier turn plus a new one) and shorter prompts both run only what the entry lacks."""
    cache = PromptCache(64 * 2**20, min_prefix_tokens=4)
    head = ids(lm, PROMPTS[0])
    decode(lm, [(head, 1)], cache)
    longer = head + ids(lm, PROMPTS[1])
    shorter = head[:-3]  # the entry's logits are not this prompt's: its last token runs
    ran, tokens, kv = decode(lm, [(longer, 5), (shorter, 6), (PROMPTS[2], 7)], cache)
    plain_ran, plain_tokens, plain_kv = decode(lm, [(longer, 5), (shorter, 6), (PROMPTS[2], 7)], None)
    assert ran == len(longer) - len(head) + 1 + len(ids(lm, PROMPTS[2]))
    assert plain_ran == len(longer) + len(shorter) + len(ids(lm, PROMPTS[2]))
    assert tokens == plain_tokens
    assert_same_prefill(kv, plain_kv)
    assert cache.hit_tokens == len(head) + len(shorter) - 1 and len(cache) == 4  # the extended prompts are kept too
    assert decode(lm, [(longer, 5)], cache)[0] == 0
    # under the minimum shared length (the chat template's first tokens are common to all prompts), it all runs
    strict = PromptCache(64 * 2**20, min_prefix_tokens=len(head))
    decode(lm, [(head, 1)], strict)
    assert decode(lm, [(shorter, 6)], strict)[0] == len(shorter)


def test_a_batch_served_from_the_cache_alone_runs_no_prompt_token(lm):
    cache = PromptCache(64 * 2**20)
    decode(lm, [(PROMPTS[3], 7)], cache)
    ran, tokens, _ = decode(lm, [(PROMPTS[3], 7), (PROMPTS[3], 8)], cache)
    assert ran == 0
    assert tokens == decode(lm, [(PROMPTS[3], 7), (PROMPTS[3], 8)], None)[1]


def test_the_engine_copies_a_prompt_asked_again_on_its_version_only(lm):
    """Sequential calls: the second ask of a prompt runs no prefill; another version (same prompt) runs its own;
    with the cache off, or prefill sharing off (the cache needs it), every call runs its prompt. Metrics: tokens
    looked up and found, prefill and prompt tokens."""
    other = dataclasses.replace(lm, version="v0002")
    spec = [SamplingSpec(max_new_tokens=4, temperature=1.0, seed=0, stop=NEVER)]
    calls = [lm, lm, other, lm]
    asks = {"v0001": 3, "v0002": 1}

    async def scenario(**engine_kwargs) -> Metrics:
        metrics = Metrics()
        engine = Engine(metrics, batch_wait_ms=0.0, **engine_kwargs)
        engine.start()
        for model in calls:  # one after the other: nothing shares a prefill within a step
            await engine.submit(Job(lm=model, prompt_ids=ids(lm, PROMPTS[0]), specs=spec))
        await engine.stop(5)
        return metrics

    n = len(ids(lm, PROMPTS[0]))
    for kwargs, runs, hits in [({"prompt_cache_bytes": 2**26}, {"v0001": 1, "v0002": 1}, {"v0001": 2, "v0002": 0}),
                               ({"prompt_cache_bytes": 0}, asks, None),
                               ({"prompt_cache_bytes": 2**26, "share_prefill": False}, asks, None)]:
        get = asyncio.run(scenario(**kwargs)).registry.get_sample_value
        for version in ("v0001", "v0002"):
            label = {"model_version": version}
            assert get("rlhf_prefill_tokens_total", label) == n * runs[version]
            assert get("rlhf_prompt_tokens_total", label) == n * asks[version]
            if hits is None:  # nothing looked up: the cache off has no sample at all, sharing off counts 0
                queried = get("rlhf_prompt_cache_query_tokens_total", label)
                if kwargs["prompt_cache_bytes"]:
                    assert queried == 0
                else:
                    assert queried is None
            else:
                assert get("rlhf_prompt_cache_hit_tokens_total", label) == n * hits[version]
                assert get("rlhf_prompt_cache_query_tokens_total", label) == n * asks[version]
        assert (get("rlhf_prompt_cache_bytes") > 0) == (hits is not None)
