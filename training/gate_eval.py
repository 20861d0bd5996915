"""The promotion gate's measurements: k samples per held-out prompt from candidate, parent and SFT
reference, scored by the judge (details 22-23). The statistics are in :mod:`training.gate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from training.config import GateSampling
from training.gate import GateFigures, bootstrap_lower_bound, distinct_n, mean, per_prompt_win_fractions
from training.ppo import logprobs_from_logits
from training.reward_model import combined, evaluate_all
from training.rollout import encode_prompt, generate, left_pad, pad_id_of, response_logits


@dataclass
class PolicySamples:
    """k responses per prompt: decoded texts, token counts (EOS included), EOS flags, KL to the reference."""

    texts: list[list[str]] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)
    has_eos: list[list[bool]] = field(default_factory=list)
    kl: list[list[float]] = field(default_factory=list)

    def flat(self, name: str) -> list:
        return [x for group in getattr(self, name) for x in group]

    def summary(self) -> dict[str, float]:
        """Mean length, EOS rate, distinct-2 and mean KL of all samples."""
        return {"mean_length": mean([float(x) for x in self.flat("lengths")]),
                "eos_rate": mean([float(x) for x in self.flat("has_eos")]),
                "distinct_2": distinct_n(self.flat("texts"), 2),
                "kl": mean(self.flat("kl")) if self.kl else float("nan"), "n": float(len(self.flat("texts")))}


def _regroup(values: list, k: int) -> list[list]:
    return [values[i : i + k] for i in range(0, len(values), k)]


@torch.no_grad()
def sample_policy(policy: nn.Module, reference: nn.Module | None, tokenizer: Any, prompts: list[str],
                  cfg: GateSampling) -> PolicySamples:
    """``cfg.samples_per_prompt`` responses per prompt (seeded by ``cfg.seed``: every policy sampled with
    the same seed draws the same random numbers), and the k1 KL of each to ``reference``."""
    from training.config import PPOConfig

    device = next(policy.parameters()).device
    k = cfg.samples_per_prompt
    run = PPOConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, rollout_batch_size=1,
                    mini_batch_size=1, max_prompt_len=cfg.max_prompt_len)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    flat = [p for p in prompts for _ in range(k)]
    texts, lengths, eos, kls = [], [], [], []
    for i in range(0, len(flat), cfg.batch_size):
        seqs = [encode_prompt(tokenizer, p, cfg.max_prompt_len) for p in flat[i : i + cfg.batch_size]]
        query, qmask = (t.to(device) for t in left_pad(seqs, pad_id_of(tokenizer)))  # (B, Q)
        response, rmask, has_eos = generate(policy, query, qmask, tokenizer, run, gen)  # (B, T)
        if reference is not None:
            args = (query, qmask, response, rmask, cfg.temperature)
            logp = logprobs_from_logits(response_logits(policy, *args), response)  # (B, T) log pi
            ref_logp = logprobs_from_logits(response_logits(reference, *args), response)  # (B, T) log pi_ref
            kls += ((logp - ref_logp) * rmask).sum(-1).tolist()  # (B,) sum_t KL_t per response
        eos += has_eos.tolist()
        lengths += rmask.sum(-1).tolist()
        texts += [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(response, rmask)]
    return PolicySamples(_regroup(texts, k), _regroup(lengths, k), _regroup(eos, k), _regroup(kls, k) if kls else [])


def score_samples(reward_model: Any, prompts: list[str], samples: PolicySamples) -> list[list[float]]:
    """(prompts x k) scores of the decoded texts as the user saw them (the RM appends EOS, as in training)."""
    items = [(p, t) for p, group in zip(prompts, samples.texts) for t in group]
    scores = reward_model.score(items).tolist() if items else []
    return _regroup(scores, len(samples.texts[0]) if samples.texts else 1)


def score_members(ensemble: Any, prompts: list[str], samples: PolicySamples) -> list[list[list[float]]]:
    """(members x prompts x k) scores of each member of a judge ensemble (detail 24)."""
    return [score_samples(member, prompts, samples) for member in ensemble.members]


def judge_accuracy_unseen(judge, metrics: dict, other_pairs: list, other_ratings: list, batch_size: int) -> dict:
    """The judge's accuracy on every item whose prompt it never trained on: its own held-out split
    plus the whole other half (cross-fitting makes that half unseen too), pooled by count. Far less
    noisy than the held-out split alone, which is what the gate's accuracy floor needs. An ensemble
    (detail 24) is measured on the other half only: its members' held-out splits differ."""
    cross = evaluate_all(judge, other_pairs, other_ratings, judge.rating_bias, batch_size)
    n_cross = len(other_pairs) + len(other_ratings)
    n_own = int(metrics.get("n_heldout") or 0) + int(metrics.get("n_heldout_ratings") or 0)
    members = {}
    if metrics.get("members", 1) > 1:  # an ensemble's members trained on each other's held-out splits
        n_own = 0
        members["member_cross_accuracy"] = [evaluate_all(m, other_pairs, other_ratings, m.rating_bias, batch_size)
                                            ["accuracy"] for m in judge.members]
    pooled = combined(metrics.get("heldout_accuracy"), n_own, cross["accuracy"], n_cross)
    return {"cross_accuracy": cross["accuracy"], "n_cross": n_cross, "unseen_accuracy": pooled} | members


def gate_figures(judge_accuracy: float | None, judge_cand: list[list[float]], judge_parent: list[list[float]],
                 cand: dict[str, float], parent: dict[str, float], ref: dict[str, float],
                 cfg: GateSampling) -> GateFigures:
    """The numbers the gate decides on, from judge scores and sample summaries."""
    fractions = per_prompt_win_fractions(judge_cand, judge_parent)
    return GateFigures(
        judge_accuracy=judge_accuracy, win_rate=mean(fractions),
        win_rate_lower_bound=bootstrap_lower_bound(fractions, cfg.confidence, cfg.n_boot, cfg.seed),
        candidate_reward=mean([s for g in judge_cand for s in g]), parent_reward=mean([s for g in judge_parent for s in g]),
        kl=cand["kl"], candidate_eos_rate=cand["eos_rate"], parent_eos_rate=parent["eos_rate"],
        candidate_mean_length=cand["mean_length"], reference_mean_length=ref["mean_length"],
        candidate_distinct_2=cand["distinct_2"], reference_distinct_2=ref["distinct_2"])
