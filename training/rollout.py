"""Batched sampling of PPO rollouts (sequence helpers: training.sequences).

A sequence is ``[query (left-padded) | response (right-padded)]``; position ids
are recomputed from the attention mask so padding never shifts positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from training.ppo import logprobs_from_logits
from training.sequences import encode_prompt, left_pad, pad_id_of, position_ids

if TYPE_CHECKING:
    from training.config import PPOConfig
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


def response_values(value_model: "RewardModel", query: Tensor, query_mask: Tensor,
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


@torch.no_grad()
def generate(policy: nn.Module, query: Tensor, query_mask: Tensor, tokenizer: Any,
             cfg: "PPOConfig", generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Sample responses (B, T) at ``cfg.temperature`` (no top-k/top-p: detail 4) and their masks.

    HF ``generate`` draws from the global RNG, so it runs inside a forked RNG (detail 21)
    seeded from ``generator``: same generator state -> same samples.
    """
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0, max_new_tokens=cfg.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id_of(tokenizer),
    )
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    devices = [query.device] if query.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = policy.generate(input_ids=query, attention_mask=query_mask, generation_config=gen_cfg)
    tokens = out[:, query.shape[1] :]  # (B, T) sampled a_t
    mask, has_eos = truncate_at_eos(tokens, tokenizer.eos_token_id)
    tokens = torch.where(mask.bool(), tokens, torch.full_like(tokens, pad_id_of(tokenizer)))
    return tokens, mask, has_eos


@torch.no_grad()
def sample_rollouts(policy: nn.Module, ref_policy: nn.Module, value_model: "RewardModel | None",
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
