"""Batched decoding on a real model: rows leave the batch as soon as they finish."""

from __future__ import annotations

import torch

from service.decoder import Row, decode_batch
from service.model_pool import load_model_dir
from service.sampling import SamplingSpec
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
