"""Batched autoregressive decoding with a KV cache, per-row sampling and streaming.

Runs in a worker thread (never on the event loop). Each row is one candidate; rows are
left-padded so that every row's next token sits in the last column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from service.sampling import SamplingSpec, find_stop, make_generator, sample_token, stop_holdback

EOS, LENGTH, STOP, CANCELLED = "eos", "length", "stop", "cancelled"


@dataclass
class Row:
    """One candidate being decoded."""

    prompt_ids: list[int]
    spec: SamplingSpec
    on_delta: Callable[[str], None]  # called with newly final text (thread-safe sink)
    is_cancelled: Callable[[], bool]
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # decoded response so far (stop strings cut)
    emitted: int = 0  # characters of `text` already handed to on_delta
    finish: str | None = None
    first_token_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    on_finished: Callable[["Row"], None] | None = None  # called once, from the decode thread
    notified: bool = False


@dataclass
class LoadedModel:
    """A model version in memory, ready to decode."""

    version: str
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    max_context: int
    eos_ids: frozenset[int]
    pad_id: int
    cache_arg: str = "past_key_values"  # forward()'s KV-cache argument ("cache" in newer transformers)


def _left_pad(rows: list[Row], pad_id: int, device: torch.device):
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T0) token ids
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T0) 1 = real token
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids):] = 1
    return ids.to(device), mask.to(device)


def _advance_text(lm: LoadedModel, row: Row) -> None:
    """Re-decodes the row's tokens; applies stop strings; emits text that is final."""
    text = lm.tokenizer.decode(row.tokens, skip_special_tokens=True).lstrip()  # the format puts a space first
    cut = find_stop(text, row.spec.stop)
    if cut is not None:
        text, row.finish = text[:cut], STOP
    row.text = text
    final = len(text) if row.finish else len(text) - stop_holdback(text, row.spec.stop)
    while final > row.emitted and text[final - 1] == "\ufffd" and not row.finish:
        final -= 1  # an incomplete multi-byte character: wait for the rest
    if final > row.emitted:
        row.on_delta(text[row.emitted:final])
        row.emitted = final


def _step_row(lm: LoadedModel, row: Row, logits: torch.Tensor, generator, context_used: int) -> int:
    """Samples the row's next token and updates its state; returns the token fed back."""
    token = sample_token(logits, row.spec, generator)
    now = time.perf_counter()
    row.first_token_at = row.first_token_at or now
    row.token_times.append(now)
    if token in lm.eos_ids:
        row.finish = EOS
        _advance_text(lm, row)
        return lm.pad_id
    row.tokens.append(token)
    _advance_text(lm, row)
    if row.finish is None and (len(row.tokens) >= row.spec.max_new_tokens or context_used >= lm.max_context):
        row.finish = LENGTH
        _advance_text(lm, row)
    return token


def _compact(past, keep: list[int], tensors: list[torch.Tensor]):
    """Drops finished rows from the KV cache and the per-row tensors (batch dimension 0)."""
    idx = torch.tensor(keep, device=tensors[0].device)
    if hasattr(past, "batch_select_indices"):
        past.batch_select_indices(idx)
    return [t.index_select(0, idx) for t in tensors]


@torch.inference_mode()
def decode_batch(lm: LoadedModel, rows: list[Row]) -> None:
    """Decodes every row to completion (EOS, length, stop string or cancellation).

    A row that finishes is reported at once (`on_finished`) and dropped from the batch, so its
    caller does not wait for the longest row and the batch stops paying for it.
    """
    device = lm.device
    active = list(rows)
    generators = [make_generator(r.spec.seed, device) for r in rows]
    ids, mask = _left_pad(rows, lm.pad_id, device)  # (B, T0), (B, T0)
    step_pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T0) positions, pads at 0
    step_input, past, context = ids, None, ids.shape[1]
    while True:
        for r in active:
            if r.finish is None and r.is_cancelled():
                r.finish = CANCELLED
        keep = [i for i, r in enumerate(active) if r.finish is None]
        for r in active:
            if r.finish is not None and not r.notified:
                r.notified = True
                if r.on_finished is not None:
                    r.on_finished(r)
        if not keep:
            return
        if len(keep) < len(active):
            if not hasattr(past, "batch_select_indices") and past is not None:
                keep = list(range(len(active)))  # a cache without row selection: keep the rows
            else:
                step_input, mask, step_pos = _compact(past, keep, [step_input, mask, step_pos])
                active, generators = [active[i] for i in keep], [generators[i] for i in keep]
        out = lm.model(input_ids=step_input, attention_mask=mask, position_ids=step_pos,
                       use_cache=True, **{lm.cache_arg: past})
        past = getattr(out, lm.cache_arg)
        logits = out.logits[:, -1, :].float().cpu()  # (B, V) next-token logits
        context += 1
        next_ids = [
            lm.pad_id if r.finish else _step_row(lm, r, logits[i], generators[i], context)
            for i, r in enumerate(active)
        ]
        step_input = torch.tensor(next_ids, device=device).unsqueeze(1)  # (B, 1)
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
        step_pos = step_pos[:, -1:] + 1  # (B, 1)
