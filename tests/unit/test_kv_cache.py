"""The growing KV-cache layer against transformers' own: the same keys and values, without a copy per step."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from training.kv_cache import GrowingLayer, make_cache


def kv(b: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g)  # (B, H, n, D)


def test_appends_like_torch_cat_and_copies_only_when_the_spare_columns_run_out():
    grown, plain = GrowingLayer(grow=3), DynamicLayer()
    buffers = []
    for step, n in enumerate([5, 1, 1, 1, 1, 2, 1]):  # a prefill, then decoding steps (one of two tokens)
        k, v = kv(2, n, step)
        got, want = grown.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert grown.get_seq_length() == plain.get_seq_length()
        buffers.append(grown._kbuf.data_ptr())
    # 5 columns + 3 spare; steps 2-4 write in place; the 2-token step outgrows it (9 > 8); the last fits again
    assert buffers == [buffers[0]] * 4 + [buffers[4]] * 3 and buffers[4] != buffers[0]


def test_assigned_tensors_such_as_selected_rows_carry_on_correctly():
    grown, plain = GrowingLayer(grow=4), DynamicLayer()
    for layer in (grown, plain):
        layer.update(*kv(3, 6, 0))
        layer.update(*kv(3, 1, 1))
        layer.batch_select_indices(torch.tensor([0, 2]))  # rows leave
        layer.keys, layer.values = layer.keys[:, :, 2:], layer.values[:, :, 2:]  # padding columns trimmed
    for step in range(2, 8):
        k, v = kv(2, 1, step)
        got, want = grown.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_make_cache_swaps_plain_layers_and_zero_keeps_the_models_own(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cache = make_cache(model, 8)
    assert len(cache.layers) == model.config.num_hidden_layers
    assert all(type(layer) is GrowingLayer and layer.grow == 8 for layer in cache.layers)
    assert make_cache(model, 0) is None
