"""Linear layers that decode with oneDNN-packed weights on the CPU (`RLHF_CPU_PACKED_WEIGHTS`).

A decoding step multiplies a few rows (one per sequence in the batch) by every weight matrix:

    x (M, K) @ W (K, N) + b,   M = rows in the step (1..32),  K, N = 768..3072 on the GPT-2-small shape

PyTorch's CPU build sends that to MKL's GEMM, which on some CPUs is slow for small M: measured on an AMD
EPYC (Zen 4), one thread, K x N = 768 x 2304, M = 4 / 16: 0.40 / 0.91-1.29 ms, against 0.15 / 0.49-0.55 ms for
oneDNN with the weight reordered once into its blocked layout (`mkldnn._reorder_linear_weight`), and a whole
86M decoding step of 15 rows 1.66x faster (the serving benchmark's bare loop, quiet). For long inputs (a
prefill's hundreds of rows) the packed kernel was no faster, and 2x slower at some sizes (M = 64), and for one
row MKL's matrix-vector product was faster: those keep the dense weight (`PACKED_MIN_ROWS`, `PACKED_MAX_ROWS`).
Both are kept: one more copy of the linear weights in memory.

The layer keeps its class (a subclass of `nn.Linear` or transformers' `Conv1D`), so peft still wraps it
(unmerged LoRA adapters on a packed base). The packed copy is used only while the layer's weight is the
tensor it was packed from (same storage, no in-place change since) and no gradient is wanted: a merged
adapter (peft's safe merge writes a new tensor) or training falls back to the dense product, exactly the
layer's own forward. Float32 on the CPU only; where the op is missing, nothing is packed.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

log = logging.getLogger(__name__)

PACKED_MIN_ROWS, PACKED_MAX_ROWS = 2, 32
"""Rows (batch x new tokens) of the products that use the packed weight: every decoding step of a batch of 2
to 32 sequences, and prefills of up to 32 tokens. One row (a lone sequence's step) keeps MKL's matrix-vector
product, which was faster (the naive one-at-a-time baseline ran 0.86x with every product packed); a prefill
longer than 32 tokens keeps the dense weight."""


class _Packed:
    """The oneDNN-blocked (N, K) weight and the fingerprint of the weight it came from; shared, never copied
    (a working copy of the model shares the weights, and the fingerprint says when they differ)."""

    def __init__(self, weight: torch.Tensor, transposed: bool) -> None:
        w = weight.detach()
        self.source = (w.data_ptr(), weight._version, tuple(w.shape))
        self.tensor = torch.ops.mkldnn._reorder_linear_weight((w.t() if transposed else w).contiguous())

    def matches(self, weight: torch.Tensor) -> bool:
        return self.source == (weight.data_ptr(), weight._version, tuple(weight.shape))

    def __deepcopy__(self, memo) -> "_Packed":
        return self

    def __copy__(self) -> "_Packed":
        return self


def _packed_product(layer: nn.Module, x: torch.Tensor, out_features: int) -> torch.Tensor | None:
    """x (..., K) -> (..., N) with the packed weight, or None where the dense forward must run."""
    packed: _Packed | None = getattr(layer, "_packed", None)
    rows = x.numel() // max(1, x.shape[-1])
    if (packed is None or not PACKED_MIN_ROWS <= rows <= PACKED_MAX_ROWS
            or x.dtype != torch.float32 or x.device.type != "cpu"
            or (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
            or not packed.matches(layer.weight)):
        return None
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]).contiguous(), packed.tensor,
                                           layer.bias, "none", [], "")  # (M, N)
    return y.view(*x.shape[:-1], out_features)


class PackedLinear(nn.Linear):
    """nn.Linear (weight (N, K)) whose small products use the packed weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _packed_product(self, x, self.out_features)
        return super().forward(x) if y is None else y


class PackedConv1D(Conv1D):
    """GPT-2's Conv1D (weight (K, N): x @ W + b) whose small products use the packed weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _packed_product(self, x, self.nf)
        return super().forward(x) if y is None else y


def packing_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack_linear_layers(model: nn.Module) -> int:
    """Packs every float32 CPU nn.Linear and Conv1D of `model` in place (their class becomes the packed
    subclass; parameters, state dict and outputs stay as they were, to float rounding). Returns how many."""
    if not packing_available():
        return 0
    started, count = time.perf_counter(), 0
    kinds = ((PackedLinear, nn.Linear, False), (PackedConv1D, Conv1D, True))
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dtype != torch.float32 or w.device.type != "cpu" or w.dim() != 2:
            continue
        for packed_class, base, transposed in kinds:
            if type(module) in (base, packed_class):
                module._packed = _Packed(w, transposed)
                module.__class__ = packed_class
                count += 1
    log.info("packed %d linear layers for CPU decoding in %.2fs", count, time.perf_counter() - started)
    return count
