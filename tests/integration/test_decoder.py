"""Batched decoding on a real model: rows leave the batch as soon as they finish."""

from __future__ import annotations

import torch

from service.decoder import Row, RowBatch, decode_batch
from service.model_pool import load_model_dir
from service.sampling import SamplingSpec
from training.kv_cache import GrowingLayer
from training.text_format import render_prompt


def make_rows(lm, specs):
    ids = lm.tokenizer(render_prompt(lm.tokenizer, "My order hasn't arrived. What should I do?"),
                       add_special_tokens=False)["input_ids"]
    events = []
    rows = [Row(prompt_ids=ids, spec=spec, on_delta=lambda d: None, is_cancelled=lambda: False) for spec in specs]
    for i, row in enumerate(rows):
        row.on_finished = lambda r, i=i: events.append((i, [len(x.tokens) for x in rows]))
    return rows, events


def test_a_short_row_is_reported_before_the_long_one_finishes(tiny_model_dir):
    lm = load_model_dir(tiny_model_dir, "v0001", torch.device("cpu"))
    long_spec = SamplingSpec(max_new_tokens=40, temperature=0.0, stop=("\u2603",))
    alone, _ = make_rows(lm, [long_spec])
    decode_batch(lm, alone)
    rows, events = make_rows(lm, [SamplingSpec(max_new_tokens=1, temperature=0.0), long_spec])
    decode_batch(lm, rows)
    assert [i for i, _ in events] == [0, 1]  # each reported once, the short one first
    assert events[0][1][1] <= 2 < len(alone[0].tokens)  # ... while the long one had barely started
    assert rows[1].text == alone[0].text  # batch-mates and compaction do not change a greedy row


def test_seeded_rows_do_not_depend_on_their_batch(tiny_model_dir):
    lm = load_model_dir(tiny_model_dir, "v0001", torch.device("cpu"))
    spec = SamplingSpec(max_new_tokens=24, temperature=1.0, seed=123)
    solo, _ = make_rows(lm, [spec])
    decode_batch(lm, solo)
    mixed, _ = make_rows(lm, [SamplingSpec(max_new_tokens=3, seed=1), spec, SamplingSpec(max_new_tokens=24, seed=9)])
    decode_batch(lm, mixed)
    assert mixed[1].text == solo[0].text


def rows_for(lm, plan):
    """plan: (prompt, spec) per row."""
    def ids(prompt):
        return lm.tokenizer(render_prompt(lm.tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return [Row(prompt_ids=ids(p), spec=s, on_delta=lambda d: None, is_cancelled=lambda: False) for p, s in plan]


def test_rows_with_one_prompt_share_its_prefill_and_decode_as_if_alone(tiny_model_dir):
    """A call's n candidates (and identical prompts joining together) run their prompt once: the model sees
    each distinct prompt once, every row gets its own copy of the cache, and the texts are the unshared ones."""
    lm = load_model_dir(tiny_model_dir, "v0001", torch.device("cpu"))
    a, b = "My order hasn't arrived. What should I do?", "Hi"
    plan = [(a, SamplingSpec(max_new_tokens=20, temperature=1.0, seed=s)) for s in (1, 2)]
    plan += [(b, SamplingSpec(max_new_tokens=20, temperature=1.0, seed=3)),
             (a, SamplingSpec(max_new_tokens=20, temperature=0.0, stop=("\u2603",)))]
    shared, unshared = RowBatch(lm), RowBatch(lm)
    shared_rows, unshared_rows = rows_for(lm, plan), rows_for(lm, plan)
    ran_shared, ran_unshared = shared.prefill(shared_rows), unshared.prefill(unshared_rows, share=False)
    len_a, len_b = len(shared_rows[0].prompt_ids), len(shared_rows[2].prompt_ids)
    assert (ran_shared, ran_unshared) == (len_a + len_b, 3 * len_a + len_b)
    for mine, theirs in zip(shared.cache.layers, unshared.cache.layers):
        assert mine.keys.shape == theirs.keys.shape and torch.allclose(mine.keys, theirs.keys, atol=1e-5)
    assert torch.equal(shared.mask, unshared.mask) and torch.equal(shared.pos, unshared.pos)
    for batch in (shared, unshared):
        batch.release()
        while batch.rows:
            batch.step()
            batch.release()
    assert [r.text for r in shared_rows] == [r.text for r in unshared_rows]
    assert shared_rows[0].tokens != shared_rows[1].tokens  # two seeds, two continuations: the copies are apart
    greedy_alone = rows_for(lm, plan[3:])
    decode_batch(lm, greedy_alone)
    assert shared_rows[3].text == greedy_alone[0].text


def test_the_growing_kv_cache_decodes_exactly_as_the_models_own_through_joins_and_leaves(tiny_model_dir):
    """Rows join a running batch (merge), leave it at different lengths (rows selected out, padding columns
    trimmed), and the cache outgrows its spare columns many times (grow=1): every row's tokens are the ones
    the model's own cache (grow=0, torch.cat every step) gives."""
    lm = load_model_dir(tiny_model_dir, "v0001", torch.device("cpu"))
    a, b = "My order hasn't arrived. What should I do?", "Hi"

    def run(grow: int) -> list[list[int]]:
        first = rows_for(lm, [(a, SamplingSpec(max_new_tokens=n, temperature=1.0, seed=s, stop=("\u2603",)))
                              for n, s in ((30, 1), (6, 2))])
        later = rows_for(lm, [(b, SamplingSpec(max_new_tokens=n, temperature=1.0, seed=s, stop=("\u2603",)))
                              for n, s in ((12, 3), (25, 4))])
        batch = RowBatch(lm, grow)
        batch.prefill(first)
        assert all((type(layer) is GrowingLayer) == (grow > 0) for layer in batch.cache.layers)
        for step in range(40):
            if step == 4:  # two rows join the running batch
                fresh = RowBatch(lm, grow)
                fresh.prefill(later)
                batch.merge(fresh)
            batch.release()
            if not batch.rows:
                break
            batch.step()
        return [r.tokens for r in first + later]

    plain = run(0)
    assert len({len(t) for t in plain}) == 4  # the rows left the batch at four different steps
    assert run(1) == plain and run(64) == plain
