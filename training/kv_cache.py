"""A KV cache whose layers keep spare columns, so that a decoding step writes its column in place.

Used by the server's decoding batches (service/decoder.py, `RLHF_KV_GROW_COLUMNS` spare columns) and by PPO's
rollout sampling (training/rollout.py, room for the whole response at once).

transformers' `DynamicLayer` appends each step's keys and values with `torch.cat`: every step copies the
layer's whole cache into a fresh allocation, O(W) per step and O(W^2) per response. A `GrowingLayer` keeps
keys and values in buffers with `grow` spare columns:

    buffer  (B, H, W + spare, D)   allocated when the spare columns run out, `grow` columns ahead
    keys    (B, H, W, D)           a view of the buffer's first W columns (what attention reads)

so a step copies only its own column, and the whole cache once every `grow` steps. Anything that assigns
`keys` or `values` (the cache's `batch_select_indices` when rows leave, `RowBatch`'s trim and merge) hands
the layer a tensor without spare columns; the next step moves it into a buffer with room (one copy, what
`torch.cat` would have cost that step). The values attention sees are the same tensors, so the logits are
bit-identical to `DynamicLayer`'s (a test). Memory: at most `grow` extra columns per layer.

Measured (`python -m benchmarks.kv_cache`, 86M GPT-2 shape, one quiet CPU thread): a decoding step of 16 rows is
1.01x faster at 64 new tokens and 1.10x at 256 (the copy grows with the cache; the matmuls do not), PPO's rollout
sampling 1.04-1.06x; at the serving benchmark's 32-token calls the server's throughput moved within its noise.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends in place into a buffer with `grow` spare columns."""

    def __init__(self, grow: int, **kwargs):
        self.grow = max(1, grow)
        self._k = self._v = None
        self._kbuf: torch.Tensor | None = None  # (B, H, C, D), C >= W: keys are its first W columns
        self._vbuf: torch.Tensor | None = None
        super().__init__(**kwargs)

    @property
    def keys(self) -> torch.Tensor | None:
        return self._k

    @keys.setter
    def keys(self, t: torch.Tensor | None) -> None:
        self._k, self._kbuf = t, None  # an assigned tensor has no spare columns (nor is a view of ours)

    @property
    def values(self) -> torch.Tensor | None:
        return self._v

    @values.setter
    def values(self, t: torch.Tensor | None) -> None:
        self._v, self._vbuf = t, None

    def _append(self, buf: torch.Tensor | None, old: torch.Tensor, new: torch.Tensor):
        """Writes `new` (B, H, n, D) after the W columns of `old`; returns (buffer, its first W + n columns)."""
        w = old.shape[-2] if old.numel() else 0
        n = new.shape[-2]
        if buf is None or w + n > buf.shape[-2] or buf.shape[:2] != new.shape[:2]:
            shape = list(new.shape)
            shape[-2] = w + n + self.grow
            grown = new.new_empty(shape)  # (B, H, W + n + grow, D)
            if w:
                grown[:, :, :w] = old
            buf = grown
        buf[:, :, w:w + n] = new
        return buf, buf[:, :, :w + n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        kbuf, keys = self._append(self._kbuf, self._k, key_states)
        vbuf, values = self._append(self._vbuf, self._v, value_states)
        self._k, self._kbuf, self._v, self._vbuf = keys, kbuf, values, vbuf
        return keys, values


def make_cache(model: torch.nn.Module, grow: int) -> DynamicCache | None:
    """A `DynamicCache` for `model` whose plain layers grow in place (`grow` spare columns); None (the model
    builds its own cache) when `grow` is 0 or the model has no config. Sliding-window and other special
    layers are left as they are."""
    config = getattr(model, "config", None)
    if grow <= 0 or config is None:
        return None
    cache = DynamicCache(config=config)
    if cache.layers:
        cache.layers = [GrowingLayer(grow) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    elif cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = lambda: GrowingLayer(grow)
    return cache
