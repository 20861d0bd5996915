"""Batched sampling of PPO rollouts (sequence helpers: training.sequences).

A sequence is ``[query (left-padded) | response (right-padded)]``; position ids
are recomputed from the attention mask so padding never shifts positions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from training.kv_cache import make_cache
from training.ppo import logprobs_from_logits
from training.sequences import encode_prompt, left_pad, pad_id_of, position_ids

if TYPE_CHECKING:
    from training.config import PPOConfig
    from training.reward_head import ScalarHeadModel
    from training.reward_model import RewardModel


@dataclass
class Rollout:
    """One batch of sampled responses and the quantities PPO needs about them."""

    query: Tensor  # (B, Q) prompt ids, left-padded
    query_mask: Tensor  # (B, Q) 1 on real prompt tokens
    response: Tensor  # (B, T) sampled ids a_t, right-padded after EOS
    response_mask: Tensor  # (B, T) 1 on response tokens up to and including EOS
    logprobs: Tensor  # (B, T) log pi_old(a_t|s_t) at temperature
    ref_logprobs: Tensor  # (B, T) log pi_ref(a_t|s_t) at temperature
    values: Tensor | None  # (B, T) V(s_t) before each action, or None without value model
    scores: Tensor  # (B,) reward-model score r(x, y) of each full sequence
    has_eos: Tensor  # (B,) True where the response ended with EOS


def response_logits(model: nn.Module, query: Tensor, query_mask: Tensor, response: Tensor,
                    response_mask: Tensor, temperature: float) -> Tensor:
    """(B, T, V) logits / temperature predicting each response token (detail 5)."""
    ids = torch.cat([query, response], dim=1)  # (B, Q+T)
    mask = torch.cat([query_mask, response_mask], dim=1)  # (B, Q+T)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    Q = query.shape[1]
    return logits[:, Q - 1 : -1].float() / temperature  # (B, T, V) predicts a_t from s_t


def response_values(value_model: "ScalarHeadModel", query: Tensor, query_mask: Tensor,
                    response: Tensor, response_mask: Tensor) -> Tensor:
    """(B, T) V(s_t): value head at the token before each response token."""
    ids = torch.cat([query, response], dim=1)
    mask = torch.cat([query_mask, response_mask], dim=1)
    values = value_model.token_values(ids, mask)  # (B, Q+T)
    return values[:, query.shape[1] - 1 : -1] * response_mask  # (B, T)


def truncate_at_eos(tokens: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(B, T) mask of tokens up to and including the first EOS, and (B,) whether EOS occurred."""
    is_eos = tokens == eos_id  # (B, T)
    eos_seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # (B, T) an EOS came earlier
    return (~eos_seen_before).long(), is_eos.any(-1)


def forward_cached(model: nn.Module, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any) -> tuple[Tensor, Any]:
    """(logits, KV cache) of one decoding step; transformers >= 5.x names the cache ``cache``."""
    if "cache" in inspect.signature(model.forward).parameters:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        return out.logits, out.cache
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    return out.logits, out.past_key_values


@torch.no_grad()
def sample_tokens(policy: nn.Module, query: Tensor, query_mask: Tensor, max_new_tokens: int, temperature: float,
                  eos_id: int, pad_id: int, generator: torch.Generator,
                  kv_room: int | None = None) -> tuple[Tensor, Tensor]:
    """(B, T) tokens drawn from softmax(logits / temperature) and (B, T) their log-probs (detail 4).

    Our own KV-cached loop instead of HF ``generate``: ``generate`` merges the model's
    ``generation_config.json`` (repetition_penalty, min_p, top_k, no_repeat_ngram_size, ...) into
    any config passed to it, so it would sample from a distribution other than the one whose
    log-probs PPO optimises. Here nothing but the temperature touches the logits. Rows that have
    emitted EOS get ``pad_id`` (log-prob 0) afterwards; sampling stops when every row has. The KV cache
    has room for ``kv_room`` new columns from the start (training.kv_cache; default: the whole response, so no
    step copies it; 0: the model's own cache, copied by every step).
    """
    B = query.shape[0]
    tokens, logps = [], []
    finished = torch.zeros(B, dtype=torch.bool, device=query.device)  # (B,) EOS emitted
    ids, mask, pos = query, query_mask, position_ids(query_mask)
    past = make_cache(policy, max_new_tokens if kv_room is None else kv_room)  # per layer (B, H, Q + room, D)
    for _ in range(max_new_tokens):
        logits, past = forward_cached(policy, ids, mask, pos, past)  # (B, L, V)
        logp = torch.log_softmax(logits[:, -1].float() / temperature, dim=-1)  # (B, V) log pi(.|s_t)
        token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # (B,) a_t ~ pi(.|s_t)
        token_logp = logp.gather(-1, token[:, None]).squeeze(-1)  # (B,) log pi(a_t|s_t)
        tokens.append(torch.where(finished, torch.full_like(token, pad_id), token))
        logps.append(torch.where(finished, torch.zeros_like(token_logp), token_logp))
        finished = finished | (token == eos_id)
        if bool(finished.all()):
            break
        ids = token[:, None]  # (B, 1) next input
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, L+1)
        pos = pos[:, -1:] + 1  # (B, 1) next position
    if not tokens:
        empty = query.new_zeros((B, 0))
        return empty, empty.float()
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


@torch.no_grad()
def generate(policy: nn.Module, query: Tensor, query_mask: Tensor, tokenizer: Any,
             cfg: "PPOConfig", generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Sample responses (B, T) at ``cfg.temperature`` (no other warper: detail 4) and their masks.

    Draws from ``generator`` only (detail 21): same generator state -> same samples.
    """
    tokens, _ = sample_tokens(policy, query, query_mask, cfg.max_new_tokens, cfg.temperature,
                              tokenizer.eos_token_id, pad_id_of(tokenizer), generator)  # (B, T) a_t
    mask, has_eos = truncate_at_eos(tokens, tokenizer.eos_token_id)
    tokens = torch.where(mask.bool(), tokens, torch.full_like(tokens, pad_id_of(tokenizer)))
    return tokens, mask, has_eos


@torch.no_grad()
def sample_rollouts(policy: nn.Module, ref_policy: nn.Module, value_model: "ScalarHeadModel | None",
                    reward_model: "RewardModel", tokenizer: Any, prompts: list[str],
                    cfg: "PPOConfig", generator: torch.Generator) -> Rollout:
    """Sample one response per prompt from ``policy`` and score it (details 4-5, 7-8)."""
    device = next(policy.parameters()).device
    seqs = [encode_prompt(tokenizer, p, cfg.max_prompt_len) for p in prompts]
    query, query_mask = (t.to(device) for t in left_pad(seqs, pad_id_of(tokenizer)))  # (B, Q)
    response, response_mask, has_eos = generate(policy, query, query_mask, tokenizer, cfg, generator)
    args = (query, query_mask, response, response_mask)
    logprobs = logprobs_from_logits(response_logits(policy, *args, cfg.temperature), response) * response_mask
    ref_logprobs = logprobs_from_logits(response_logits(ref_policy, *args, cfg.temperature), response) * response_mask
    values = response_values(value_model, *args) if value_model is not None else None
    full_ids = torch.cat([query, response], dim=1)  # (B, Q+T)
    scores = reward_model(full_ids, torch.cat([query_mask, response_mask], dim=1)).float()  # (B,) r(x, y)
    return Rollout(query, query_mask, response, response_mask, logprobs, ref_logprobs, values, scores, has_eos)
