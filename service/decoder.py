"""Batched autoregressive decoding with a per-row KV cache, per-row sampling and streaming.

Runs in the engine's decode thread (never on the event loop). A `RowBatch` holds the rows that
decode together on one model version: one KV cache whose rows are left-padded to a common width
(every row's next token sits in the last column), an attention mask that hides the padding, and
per-row positions. Rows join by being prefilled as a batch of their own and merged in (the
narrower side is padded on the left); rows leave by being selected out of the cache, and columns
that only padding uses any more are trimmed. So a row's cache grows with it and is freed with it.
The cache's layers keep spare columns (`training/kv_cache.py`): a step writes its keys and values in
place instead of copying the whole cache, as transformers' own cache does every step.

A row whose sampling fails finishes with ERROR; the other rows carry on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from rlhf_core.settings import Settings
from service.prompt_cache import CachedPrompt, PromptCache
from service.sampling import SamplingSpec, find_stop, make_generator, sample_token, stop_holdback
from training.kv_cache import GrowingLayer, make_cache
from training.sequences import left_pad, position_ids

log = logging.getLogger(__name__)

EOS, LENGTH, STOP, CANCELLED, ERROR = "eos", "length", "stop", "cancelled", "error"
GROW_COLUMNS: int = Settings.model_fields["kv_grow_columns"].default  # spare KV-cache columns (training/kv_cache.py)


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
    error: str | None = None  # why the row failed (finish == ERROR), safe to show the caller
    bad_settings: bool = False  # the failure came from this row's own settings (INVALID_ARGUMENT)
    generator: torch.Generator | None = None

    @property
    def reserved_tokens(self) -> int:
        """Cache columns this row may come to hold (its share of `max_tokens_in_flight`)."""
        return len(self.prompt_ids) + self.spec.max_new_tokens


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


def _step_row(lm: LoadedModel, row: Row, logits: torch.Tensor, finite: bool) -> int:
    """Samples the row's next token and updates its state; returns the token fed back."""
    if not finite:
        raise FloatingPointError("the model produced no finite score for this row")
    token = sample_token(logits, row.spec, row.generator)
    now = time.perf_counter()
    row.first_token_at = row.first_token_at or now
    row.token_times.append(now)
    if token in lm.eos_ids:
        row.finish = EOS
        _advance_text(lm, row)
        return lm.pad_id
    row.tokens.append(token)
    _advance_text(lm, row)
    context_used = len(row.prompt_ids) + len(row.tokens)
    if row.finish is None and (len(row.tokens) >= row.spec.max_new_tokens or context_used >= lm.max_context):
        row.finish = LENGTH
        _advance_text(lm, row)
    if len(row.tokens) == 1 and not row.emitted and row.finish is None:
        row.on_delta("")  # its text is not final yet (a leading space, part of a character, a stop string's start):
        # the first chunk goes out at the first token all the same, so a stream's time to first token is the token's
    return token


def sample_rows(lm: LoadedModel, rows: list[Row], logits: torch.Tensor) -> list[int]:
    """Next token of every row from its logits (B, V); a row that fails is finished with ERROR alone."""
    out = []
    finite = torch.isfinite(logits).any(dim=-1).tolist()  # (B,) some score is usable
    for row, row_logits, ok in zip(rows, logits, finite):
        try:
            out.append(_step_row(lm, row, row_logits, ok))
        except Exception as exc:  # this row's failure must not fail its batch-mates
            log.warning("sampling failed for one row (%s): %s", row.spec, exc)
            row.finish, row.error = ERROR, "sampling failed"
            row.bad_settings = not isinstance(exc, FloatingPointError)
            if row.bad_settings:
                row.error = f"sampling failed with these settings ({type(exc).__name__}); check sampling parameters"
            out.append(lm.pad_id)
    return out


def _forward(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache):
    out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{lm.cache_arg: cache})
    return out.logits[:, -1, :].float().cpu(), getattr(out, lm.cache_arg)  # (B, V) next-token logits


def _pad_left(t: torch.Tensor, cols: int, dim: int) -> torch.Tensor:
    if cols == 0:
        return t
    shape = list(t.shape)
    shape[dim] = cols
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class RowBatch:
    """Rows decoding together on one model version, with their KV cache."""

    def __init__(self, lm: LoadedModel, grow: int = GROW_COLUMNS):
        self.lm = lm
        self.grow = grow  # spare KV-cache columns (0: the model's own cache, copied by every step)
        self.rows: list[Row] = []
        self.cache = None  # per layer (B, H, W, D) keys and values
        self.mask = torch.zeros((0, 1), dtype=torch.long, device=lm.device)  # (B, W + 1) 1 = real token
        self.pos = torch.zeros((0, 1), dtype=torch.long, device=lm.device)  # (B, 1) position of the next input
        self.next_ids = torch.zeros((0, 1), dtype=torch.long, device=lm.device)  # (B, 1) the next input

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens_in_cache(self) -> int:
        return int(self.mask.sum()) - len(self.rows)

    @torch.inference_mode()
    def prefill(self, rows: list[Row], share: bool = True, cache: PromptCache | None = None) -> int:
        """Runs the prompts of `rows` (a fresh batch) and samples each row's first token; returns the prompt
        tokens the model ran. With `share`, rows with the same prompt (one call's n candidates, identical
        prompts joining in one step) share one forward pass: each gets a copy of its logits and KV cache; and
        with a `cache` (service/prompt_cache.py), prompts prefilled before on this version are copied from it
        instead of run, prompts that start like a kept one run only the rest, and what ran is kept in it."""
        prompts = [tuple(r.prompt_ids) for r in rows]
        distinct = list(dict.fromkeys(prompts)) if share else prompts  # (U,) prompts of the batch, U <= B
        for r in rows:
            r.generator = make_generator(r.spec.seed, torch.device("cpu"))  # logits are sampled on the CPU
        cache = cache if share and cache is not None and cache.enabled else None
        hits, ran = {}, 0  # prompt -> its whole entry; prompt tokens the model ran
        for p in distinct if cache is not None else []:
            entry, n = cache.lookup(self.lm.version, p)
            if entry is not None and n < len(p):  # a kept prefix: only the rest of the prompt runs
                entry, ran = self._extend(cache, p, entry, n), ran + len(p) - n
            if entry is not None:
                hits[p] = entry
        copied = bool(hits)
        run = [p for p in distinct if p not in hits]  # prompts the model runs from their first token
        if run:
            ids, mask = left_pad([list(p) for p in run], self.lm.pad_id)  # (R, T0) ids, 1 = real token
            ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
            logits, self.cache = _forward(self.lm, ids, mask, position_ids(mask), make_cache(self.lm.model, self.grow))
            ran += int(mask.sum())
            if cache is not None:
                hits.update(self._keep(cache, run, logits))
        if copied:  # some came from the cache: the batch's KV is assembled from the entries
            logits = self._assemble([hits[p] for p in distinct], [len(p) for p in distinct])
        _, mask = left_pad([list(p) for p in distinct], self.lm.pad_id)  # (U, T0) 1 = real token
        mask = mask.to(self.lm.device)
        positions = position_ids(mask)  # (U, T0) pads at 0
        if len(distinct) < len(rows):
            where = {p: i for i, p in enumerate(distinct)}
            src = torch.tensor([where[p] for p in prompts], dtype=torch.long)  # (B,) row -> its prompt's index
            logits = logits.index_select(0, src)  # (B, V)
            src = src.to(self.lm.device)
            self.cache.batch_select_indices(src)  # per layer (B, H, T0, D): each row its own copy
            mask, positions = mask.index_select(0, src), positions.index_select(0, src)  # (B, T0)
        self.rows = list(rows)
        self._advance(logits, mask, positions[:, -1:] + 1)
        return ran

    def _keep(self, cache: PromptCache, run: list[tuple[int, ...]], logits: torch.Tensor) -> dict:
        """Puts each prompt just run into the prompt cache (its own columns of the left-padded batch, copied);
        returns them by prompt. Models whose cache has other than plain layers (sliding windows...) keep nothing."""
        layers = self.cache.layers if self.cache is not None else []
        if not layers or any(type(layer) not in (DynamicLayer, GrowingLayer) for layer in layers):
            return {}
        width = layers[0].keys.shape[2]
        kept = {}
        for i, p in enumerate(run):
            cols = slice(width - len(p), width)  # the prompt's real tokens: the last len(p) columns
            entry = CachedPrompt(keys=tuple(layer.keys[i:i + 1, :, cols].clone() for layer in layers),  # (1, H, T, D)
                                 values=tuple(layer.values[i:i + 1, :, cols].clone() for layer in layers),
                                 logits=logits[i].clone())  # (V,)
            cache.put(self.lm.version, p, entry)
            kept[p] = entry
        return kept

    def _extend(self, cache: PromptCache, prompt: tuple[int, ...], entry: CachedPrompt, n: int) -> CachedPrompt:
        """Runs `prompt` after its first n tokens, whose keys and values are the first n of `entry`'s; keeps the
        whole prompt's entry and returns it."""
        kv = self._kv_cache([(k[:, :, :n], v[:, :, :n]) for k, v in zip(entry.keys, entry.values)])  # (1, H, n, D)
        ids = torch.tensor([prompt[n:]], dtype=torch.long, device=self.lm.device)  # (1, S) the rest
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=self.lm.device)  # (1, n + S)
        positions = torch.arange(n, len(prompt), device=self.lm.device).unsqueeze(0)  # (1, S)
        logits, kv = _forward(self.lm, ids, mask, positions, kv)  # (1, V)
        whole = CachedPrompt(keys=tuple(layer.keys.clone() for layer in kv.layers),  # (1, H, n + S, D)
                             values=tuple(layer.values.clone() for layer in kv.layers), logits=logits[0].clone())
        cache.put(self.lm.version, prompt, whole)
        return whole

    def _kv_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        """A KV cache (the batch's kind) holding these per layer (B, H, W, D) keys and values."""
        kv = make_cache(self.lm.model, self.grow) or DynamicCache(config=self.lm.model.config)
        for i, (keys, values) in enumerate(layers):
            kv.update(keys, values, i)
        return kv

    def _assemble(self, entries: list[CachedPrompt], lengths: list[int]) -> torch.Tensor:
        """Sets the batch's KV cache from prompt entries, left-padded to the longest; returns their (U, V) logits."""
        width = max(lengths)
        self.cache = self._kv_cache([
            (torch.cat([_pad_left(e.keys[i], width - n, 2) for e, n in zip(entries, lengths)]),  # (U, H, T0, D)
             torch.cat([_pad_left(e.values[i], width - n, 2) for e, n in zip(entries, lengths)]))
            for i in range(len(entries[0].keys))])
        return torch.stack([e.logits for e in entries])  # (U, V)

    @torch.inference_mode()
    def step(self) -> None:
        """One decoding step for every row."""
        logits, self.cache = _forward(self.lm, self.next_ids, self.mask, self.pos, self.cache)
        self._advance(logits, self.mask, self.pos + 1)

    def _advance(self, logits: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> None:
        next_ids = sample_rows(self.lm, self.rows, logits)
        self.next_ids = torch.tensor(next_ids, dtype=torch.long, device=self.lm.device).unsqueeze(1)  # (B, 1)
        self.mask = torch.cat([mask, mask.new_ones((len(self.rows), 1))], dim=1)  # (B, W + 1)
        self.pos = pos  # (B, 1)

    def release(self) -> list[Row]:
        """Drops finished and cancelled rows (reporting each once) and trims padding-only columns."""
        for r in self.rows:
            if r.finish is None and r.is_cancelled():
                r.finish = CANCELLED
        done = [r for r in self.rows if r.finish is not None]
        if not done:
            return []
        keep = [i for i, r in enumerate(self.rows) if r.finish is None]
        self.rows = [self.rows[i] for i in keep]
        idx = torch.tensor(keep, dtype=torch.long, device=self.lm.device)
        self.mask, self.pos, self.next_ids = (t.index_select(0, idx) for t in (self.mask, self.pos, self.next_ids))
        if not keep:
            self.cache = None
        else:
            self.cache.batch_select_indices(idx)
            self._trim()
        for r in done:
            _notify(r)
        return done

    def _trim(self) -> None:
        used = self.mask[:, :-1].any(dim=0)  # (W,) columns some row still attends to
        first = int(used.float().argmax()) if bool(used.any()) else used.numel()
        if first == 0:
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self.mask = self.mask[:, first:]

    def merge(self, other: "RowBatch") -> None:
        """Appends `other`'s rows; the narrower cache is padded on the left to the common width."""
        if not other.rows:
            return
        if not self.rows:
            self.rows, self.cache, self.mask, self.pos, self.next_ids = (
                other.rows, other.cache, other.mask, other.pos, other.next_ids)
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        pad_self, pad_other = width - self.mask.shape[1], width - other.mask.shape[1]
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, pad_self, 2), _pad_left(theirs.keys, pad_other, 2)])
            mine.values = torch.cat([_pad_left(mine.values, pad_self, 2), _pad_left(theirs.values, pad_other, 2)])
        self.mask = torch.cat([_pad_left(self.mask, pad_self, 1), _pad_left(other.mask, pad_other, 1)])
        self.pos = torch.cat([self.pos, other.pos])
        self.next_ids = torch.cat([self.next_ids, other.next_ids])
        self.rows = self.rows + other.rows

    def fail(self, message: str) -> list[Row]:
        """Finishes every row with ERROR (the model itself failed)."""
        for r in self.rows:
            if r.finish is None:
                r.finish, r.error = ERROR, message
        return self.release()


def _notify(row: Row) -> None:
    if not row.notified:
        row.notified = True
        if row.on_finished is not None:
            row.on_finished(row)


def decode_batch(lm: LoadedModel, rows: list[Row], grow: int = GROW_COLUMNS) -> None:
    """Decodes every row to completion (EOS, length, stop string, cancellation or error).

    A row that finishes is reported at once (`on_finished`) and dropped from the batch, so its
    caller does not wait for the longest row and the batch stops paying for it.
    """
    batch = RowBatch(lm, grow)
    batch.prefill(rows)
    batch.release()
    while batch.rows:
        batch.step()
        batch.release()
