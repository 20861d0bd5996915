"""What a PPO round measures once on the SFT reference: the reward normalisation (detail 6) and the
distinct-2 that the diversity floor holds the rollouts to (training/diversity.py).

Both come from one set of reference samples on a fixed prompt set, drawn with their own generator seeded by
``cfg.norm_seed`` (not the round's seed), so a round's figures depend only on its reward model and the
reference: the effective KL strength and the diversity floor do not drift with the parent policy or the
sampling luck of the first rollout batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.config import PPOConfig
from training.diversity import token_distinct_n
from training.reward_model import RewardModel
from training.rollout import sample_rollouts


@dataclass(frozen=True)
class ReferenceStats:
    """A round's fixed figures of the SFT reference."""

    gain: float = 1.0
    """std of the reference's RM scores: scores are divided by it (detail 6)."""
    bias: float = 0.0
    """mean of the reference's RM scores: subtracted first (detail 6)."""
    distinct_2: float | None = None
    """Token distinct-2 of the reference's samples, mean over batches of ``rollout_batch_size`` (None: not measured)."""

    @property
    def norm(self) -> tuple[float, float]:
        return self.gain, self.bias


def reward_norm_from(scores: Tensor) -> tuple[float, float]:
    """(gain, bias) making ``scores`` mean 0, std 1 (detail 6)."""
    bias = float(scores.mean())
    gain = float(scores.std()) if scores.numel() > 1 else 1.0
    return (gain if gain > 1e-6 else 1.0), bias


@torch.no_grad()
def reference_stats(ref_policy: nn.Module, reward_model: RewardModel, tokenizer: Any, prompts: list[str],
                    cfg: PPOConfig, norm: bool = True, distinct: bool = False) -> ReferenceStats:
    """Samples the reference once per prompt, in batches of ``cfg.rollout_batch_size`` (the rollouts' size,
    so their distinct-2 compares with a rollout batch's); ``norm``/``distinct``: which figures to keep."""
    gen = torch.Generator(device=next(ref_policy.parameters()).device).manual_seed(cfg.norm_seed)
    scores, distincts = [], []
    for i in range(0, len(prompts), cfg.rollout_batch_size):
        ro = sample_rollouts(ref_policy, ref_policy, None, reward_model, tokenizer,
                             prompts[i : i + cfg.rollout_batch_size], cfg, gen)
        scores.append(ro.scores.cpu())  # (b,) raw r(x, y) of reference samples
        distincts.append(token_distinct_n(ro.response, ro.response_mask, 2))
    gain, bias = reward_norm_from(torch.cat(scores)) if norm and scores else (1.0, 0.0)
    return ReferenceStats(gain, bias, sum(distincts) / len(distincts) if distinct and distincts else None)


def reference_reward_norm(ref_policy: nn.Module, reward_model: RewardModel, tokenizer: Any, prompts: list[str],
                          cfg: PPOConfig) -> tuple[float, float]:
    """(gain, bias) from the RM scores of SFT-reference samples on a fixed prompt set (detail 6)."""
    return reference_stats(ref_policy, reward_model, tokenizer, prompts, cfg).norm


def norm_prompt_set(prompts: list[str], n: int, seed: int) -> list[str]:
    """A fixed sample of ``n`` prompts (sorted first, so the input order does not matter)."""
    pool = sorted(set(prompts))
    return random.Random(seed).sample(pool, min(n, len(pool)))


def fixed_reference_stats(ref_policy: nn.Module, reward_model: RewardModel, tokenizer: Any, prompts: list[str],
                          cfg: PPOConfig, norm_prompts: list[str] | None = None) -> ReferenceStats:
    """A round's reference figures on the fixed prompt set ``norm_prompts`` (default: a ``cfg.norm_seed``-seeded
    sample of ``cfg.norm_samples`` of ``prompts``): the (gain, bias) when ``cfg.normalize_reward`` (else 1, 0)
    and distinct-2 when ``cfg.diversity_floor`` is set; nothing is sampled when neither is asked for. Used by
    the full and LoRA loops."""
    distinct = cfg.diversity_floor is not None
    if not cfg.normalize_reward and not distinct:
        return ReferenceStats()
    fixed = norm_prompts if norm_prompts is not None else norm_prompt_set(prompts, cfg.norm_samples, cfg.norm_seed)
    return reference_stats(ref_policy, reward_model, tokenizer, fixed, cfg, norm=cfg.normalize_reward,
                           distinct=distinct)
