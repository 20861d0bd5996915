"""The PPO loop: rollouts -> KL-penalised rewards -> GAE -> clipped PPO updates.

On CUDA, rollouts and the updates' forwards run under bf16 autocast (``training.devices.autocast``,
the same rule as the LoRA loop); on CPU everything stays fp32.

The value model is a copy of the reward model's transformer trunk with a fresh,
zero-initialised scalar head applied at every position (detail 20; training/reward_head.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from training.config import PPOConfig
from training.kl_controller import AdaptiveKLController, FixedKLController, make_kl_controller
from training.ppo import (clipped_policy_loss, clipped_value_loss, entropy_from_logits, gae, kl_penalised_rewards,
                          logprobs_from_logits, masked_mean, masked_whiten)
from training.devices import autocast, resolve_device
from training.diversity import DiversityFloor, repeat_shares, token_distinct_n
from training.reference import ReferenceStats, fixed_reference_stats
from training.reward_head import ScalarHeadModel, value_model_from
from training.reward_model import RewardModel
from training.rollout import Rollout, response_logits, response_values, sample_rollouts


def load_causal_lm(path: str | Path, device: torch.device, trainable: bool) -> nn.Module:
    """An HF causal LM from a local dir, dropout off (detail 16), frozen unless ``trainable``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
    return model.requires_grad_(trainable)


def shaped_scores(rollout: Rollout, gain: float, bias: float, cfg: PPOConfig) -> Tensor:
    """(B,) normalised RM scores with the missing-EOS penalty and optional whitening (details 6-7)."""
    scores = (rollout.scores - bias) / gain  # (B,) normalised r(x, y)
    if cfg.missing_eos_penalty is not None:
        scores = torch.where(rollout.has_eos, scores, torch.full_like(scores, cfg.missing_eos_penalty))
    if cfg.whiten_scores and scores.numel() > 1:
        scores = masked_whiten(scores, torch.ones_like(scores))
    return scores


def minibatch_losses(policy: nn.Module, value_model: ScalarHeadModel, ro: Rollout, idx: Tensor,
                     advantages: Tensor, returns: Tensor, cfg: PPOConfig) -> tuple[Tensor, dict[str, float]]:
    """Joint loss L = L^CLIP + c_vf L^VF - c_ent H on the responses ``idx``, and its stats."""
    q, qm, r, rm = ro.query[idx], ro.query_mask[idx], ro.response[idx], ro.response_mask[idx]
    logits = response_logits(policy, q, qm, r, rm, cfg.temperature)  # (b, T, V) detail 5
    logprobs = logprobs_from_logits(logits, r)  # (b, T) log pi_theta(a_t|s_t)
    values = response_values(value_model, q, qm, r, rm)  # (b, T) V_phi(s_t)
    pg_loss, clipfrac, approxkl = clipped_policy_loss(logprobs, ro.logprobs[idx], advantages[idx], rm, cfg.cliprange)
    vf_loss, vf_clipfrac = clipped_value_loss(values, ro.values[idx], returns[idx], rm, cfg.cliprange_value)
    entropy = masked_mean(entropy_from_logits(logits), rm)  # () mean per-token H(pi)
    loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy  # detail 13, 15
    stats = {"policy_loss": float(pg_loss.detach()), "value_loss": float(vf_loss.detach()), "clipfrac": float(clipfrac),
             "vf_clipfrac": float(vf_clipfrac), "approxkl": float(approxkl), "entropy": float(entropy.detach())}
    return loss, stats


def ppo_update(policy: nn.Module, value_model: ScalarHeadModel, optimizer: torch.optim.Optimizer, ro: Rollout,
               advantages: Tensor, returns: Tensor, cfg: PPOConfig, gen: torch.Generator) -> dict[str, float]:
    """``cfg.ppo_epochs`` passes of shuffled minibatch updates; stops early past ``cfg.kl_stop`` (detail 17)."""
    params = [p for p in list(policy.parameters()) + list(value_model.parameters()) if p.requires_grad]
    B = ro.response.shape[0]
    all_stats: list[dict[str, float]] = []
    stopped = False
    for _ in range(cfg.ppo_epochs):  # detail 14
        perm = torch.randperm(B, generator=gen)
        for start in range(0, B, cfg.mini_batch_size):
            idx = perm[start : start + cfg.mini_batch_size].to(ro.response.device)
            with autocast(ro.response.device):  # bf16 forwards on CUDA; backward outside autocast
                loss, stats = minibatch_losses(policy, value_model, ro, idx, advantages, returns, cfg)
            if all_stats and cfg.kl_stop is not None and stats["approxkl"] > cfg.kl_stop:
                stopped = True  # pi drifted past the bound: skip this and all later updates
                break
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)  # detail 18
            optimizer.step()
            all_stats.append(stats)
        if stopped:
            break
    means = {k: sum(s[k] for s in all_stats) / len(all_stats) for k in all_stats[0]}
    return {**means, "updates": float(len(all_stats)), "early_stopped": float(stopped)}


def next_prompts(prompts: list[str], order: list[int], rng: random.Random, n: int) -> list[str]:
    """The next ``n`` prompts of a reshuffled-each-pass cycle over ``prompts`` (``order`` is consumed)."""
    batch = []
    for _ in range(n):
        if not order:
            order.extend(rng.sample(range(len(prompts)), len(prompts)))
        batch.append(prompts[order.pop()])
    return batch


def kl_mean_se(kl: Tensor) -> tuple[float, float]:
    """The rollouts' mean KL to the reference per response (kl: (B, T) per-token) and its standard error."""
    k = kl.sum(-1)  # (B,) sum_t KL_t
    se = k.std() / k.numel() ** 0.5 if k.numel() > 1 else torch.zeros(())  # () sd / sqrt(B)
    return float(k.mean()), float(se)


def over_kl_budget(kl: Tensor, budget: float | None, start: float, z: float = 0.0, start_se: float = 0.0) -> bool:
    """Whether the rollouts' mean KL to the reference, sum_t KL_t per response (kl: (B, T)), exceeds both
    ``budget`` and ``start`` (the round's first batch: a parent already past the budget may still train
    while its KL does not grow). ``z`` > 0 asks for evidence: the batch's mean must clear ``budget`` by z
    standard errors and the start (whose own standard error is ``start_se``) by z standard errors of the
    difference; z = 0 compares the means alone."""
    if budget is None:
        return False
    mean, se = kl_mean_se(kl)
    above_budget = mean - budget > z * se
    above_start = mean - start > z * (se ** 2 + start_se ** 2) ** 0.5
    return above_budget and above_start


def round_budget(budget: float | None, start: float, step: float | None) -> float | None:
    """A round's KL budget: ``budget`` (nats to the reference), and with a ``step`` at most ``start`` (the parent's
    KL, from the round's first batch) + ``step``, so that one round cannot spend the whole bound."""
    if step is None:
        return budget
    paced = start + step  # () KL_parent + delta
    return paced if budget is None else min(budget, paced)


WITHIN, RETRY, END = "within", "retry", "end"


class KLBudget:
    """Holds a round's rollouts within a KL budget (detail 17): at a rollout batch whose mean KL to the reference
    is over budget, the trainable weights of the last policy whose rollouts were within it are put back; the
    round then ends, or (``retries`` > 0) carries on at a tighter leash until that many batches in a row were over."""

    def __init__(self, budget: float | None, module: nn.Module, retries: int = 0, z: float = 0.0,
                 step: float | None = None):
        self.budget, self.module, self.retries, self.z, self.step = budget, module, retries, z, step
        self.start: float | None = None  # () the round's first batch's KL: the parent's
        self.start_se = 0.0  # () its standard error
        self.saved: dict[str, Tensor] | None = None
        self.misses = 0  # over-budget batches in a row

    def verdict(self, kl: Tensor, step: int, history: list, log: Callable[[str], Any]) -> str:
        """Call before updating on the batch with per-token KL ``kl`` (B, T). WITHIN: train on it. RETRY or END:
        the weights were restored and the undone update's entry dropped from ``history``; skip the batch
        (RETRY: the caller tightens beta) or stop (END). The first batch sets ``start``, so it is never over:
        weights are always saved before any batch can be."""
        if self.budget is None and self.step is None:
            return WITHIN
        if self.start is None:
            self.start, self.start_se = kl_mean_se(kl)
            self.budget = round_budget(self.budget, self.start, self.step)
        trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        with torch.no_grad():
            if not over_kl_budget(kl, self.budget, self.start, self.z, self.start_se):
                self._save(trainable)
                self.misses = 0
                return WITHIN
            for n, p in trainable:  # undo the update that crossed the budget
                p.copy_(self.saved[n])
        if self.misses == 0:  # the entry of the update just undone (a retry's batch added none)
            history.pop()
        self.misses += 1
        over = f"step {step}: rollout KL {float(kl.sum(-1).mean()):.3g} > budget {self.budget:.3g}"
        if self.misses > self.retries:
            log(f"{over}; round ends with the policy of step {step - self.misses}")
            return END
        log(f"{over}; back to the policy of step {step - self.misses}, retry {self.misses} of {self.retries}")
        return RETRY

    def _save(self, trainable: list[tuple[str, Tensor]]) -> None:
        """One copy of the trainable weights, refreshed in place (no second copy while the old one lives)."""
        if self.saved is None:
            self.saved = {n: p.detach().clone() for n, p in trainable}
        else:
            for n, p in trainable:
                self.saved[n].copy_(p)


def budget_verdict(budget: KLBudget, kl_ctl: FixedKLController | AdaptiveKLController, kl: Tensor, step: int,
                   history: list, cfg: PPOConfig, log: Callable[[str], Any]) -> str:
    """``budget.verdict`` on this batch; on RETRY, beta is multiplied by ``cfg.kl_budget_backoff`` first."""
    verdict = budget.verdict(kl, step, history, log)
    if verdict == RETRY:
        kl_ctl.value *= cfg.kl_budget_backoff  # beta for the steps left
    return verdict


def rollout_stats(ro: Rollout, kl: Tensor) -> dict[str, float]:
    """Per-batch means: RM score, KL summed over each response's tokens (and that mean's standard error, the
    noise the KL budget's test sees), response length."""
    kl_mean, kl_se = kl_mean_se(kl)
    return {"mean_reward": float(ro.scores.mean()), "kl": kl_mean, "kl_se": kl_se,
            "mean_response_len": float(ro.response_mask.sum(-1).float().mean()),
            "eos_fraction": float(ro.has_eos.float().mean())}


def diversity_penalised(rewards: Tensor, ro: Rollout, floor: DiversityFloor) -> tuple[Tensor, dict[str, float]]:
    """Moves lambda by the batch's token distinct-2, then (B, T) r_t - lambda p_t (training/diversity.py) and the
    step's figures: distinct-2, and with a floor its ratio to the reference's, lambda and the mean penalty per response."""
    distinct = token_distinct_n(ro.response, ro.response_mask, 2)
    ratio = floor.update(distinct)
    if ratio is None:
        return rewards, {"distinct_2": distinct}
    penalty = floor.value * repeat_shares(ro.response, ro.response_mask, 2) * ro.response_mask  # (B, T) lambda p_t
    stats = {"distinct_2": distinct, "distinct_2_ratio": ratio, "repeat_coef": floor.value,
             "repeat_penalty": float(penalty.sum(-1).mean())}
    return rewards - penalty, stats


def ppo_iterations(sample: Callable[[list[str]], Rollout],
                   update: Callable[[Rollout, Tensor, Tensor], dict[str, float]], trainable: nn.Module,
                   prompts: list[str], cfg: PPOConfig, ref: ReferenceStats,
                   log: Callable[[str], Any]) -> list[dict[str, float]]:
    """The iterations of one PPO round, whatever form the policy takes (full weights or a LoRA adapter):
    sample a batch, shape its rewards with the KL penalty (detail 8), hold the round within its KL budget
    (detail 17, on ``trainable``'s weights), the repeat penalty of the diversity floor (training/diversity.py),
    GAE and whitening (details 10-11), ``update`` (the PPO epochs), adapt beta (detail 9).
    ``ref``: the reference's fixed figures (detail 6's gain and bias, distinct-2). Returns the per-step metrics."""
    gain, bias = ref.norm
    floor = DiversityFloor(cfg.diversity_floor, ref.distinct_2, cfg.diversity_lr, cfg.repeat_coef_max)
    kl_ctl = make_kl_controller(cfg.init_kl_coef, cfg.adaptive_kl, cfg.kl_target, cfg.kl_horizon)
    budget = KLBudget(cfg.kl_budget, trainable, cfg.kl_budget_retries, cfg.kl_budget_z, cfg.kl_round_step)
    rng, order = random.Random(cfg.seed), []
    history: list[dict[str, float]] = []
    for step in range(cfg.steps):
        ro = sample(next_prompts(prompts, order, rng, cfg.rollout_batch_size))
        kl_coef = kl_ctl.value
        rewards, kl = kl_penalised_rewards(shaped_scores(ro, gain, bias, cfg), ro.logprobs, ro.ref_logprobs,
                                           ro.response_mask, kl_coef)  # (B, T) r_t, detail 8
        verdict = budget_verdict(budget, kl_ctl, kl, step, history, cfg, log)
        if verdict == END:
            break
        if verdict == RETRY:  # this batch came from the undone policy: sample again at the tighter beta
            continue
        rewards, diversity = diversity_penalised(rewards, ro, floor)  # (B, T) r_t - lambda p_t
        advantages, returns = gae(rewards, ro.values, ro.response_mask, cfg.gamma, cfg.lam)  # (B, T) detail 10
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, ro.response_mask)  # detail 11
        stats = {**rollout_stats(ro, kl), **diversity, **update(ro, advantages, returns)}
        kl_ctl.update(stats["kl"], cfg.rollout_batch_size)  # detail 9
        metrics = {"step": float(step), **stats, "kl_coef": kl_coef, "reward_gain": gain, "reward_bias": bias}
        history.append(metrics)
        log(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return history


def run_ppo(policy_dir: str | Path, reference_dir: str | Path, reward_model: RewardModel, prompts: list[str],
            cfg: PPOConfig, log: Callable[[str], Any] = print,
            norm_prompts: list[str] | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """Fine-tune the policy at ``policy_dir`` with PPO; returns the plain HF causal LM and per-step metrics.

    ``norm_prompts``: the fixed prompt set of the reward normalisation (detail 6); default: a
    ``cfg.norm_seed``-seeded sample of ``cfg.norm_samples`` of ``prompts``.
    """
    from transformers import AutoTokenizer

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    policy = load_causal_lm(policy_dir, device, trainable=True)
    ref_policy = load_causal_lm(reference_dir, device, trainable=False)  # frozen pi_ref (detail 8)
    reward_model = reward_model.to(device).eval().requires_grad_(False)
    value_model = value_model_from(reward_model)  # V(s_t): RM trunk + zero head (detail 20)
    params = list(policy.parameters()) + list(value_model.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)  # detail 19
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    perm_gen = torch.Generator().manual_seed(cfg.seed)
    with autocast(device):
        ref = fixed_reference_stats(ref_policy, reward_model, tokenizer, prompts, cfg, norm_prompts)  # detail 6

    def sample(batch_prompts: list[str]) -> Rollout:
        with autocast(device):  # bf16 on CUDA, fp32 on CPU (training/devices.py)
            return sample_rollouts(policy, ref_policy, value_model, reward_model, tokenizer, batch_prompts, cfg,
                                   sample_gen)

    def update(ro: Rollout, advantages: Tensor, returns: Tensor) -> dict[str, float]:
        return ppo_update(policy, value_model, optimizer, ro, advantages, returns, cfg, perm_gen)

    history = ppo_iterations(sample, update, policy, prompts, cfg, ref, log)
    return policy.eval(), history


@torch.no_grad()
def evaluate_policy(policy: nn.Module, reference: nn.Module, reward_model: RewardModel, tokenizer: Any,
                    prompts: list[str], cfg: PPOConfig) -> dict[str, float]:
    """Mean RM score and mean KL(pi || pi_ref) per response on ``prompts`` (seeded sampling)."""
    device = next(policy.parameters()).device
    reward_model = reward_model.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    scores, kls, lens = [], [], []
    for i in range(0, len(prompts), cfg.rollout_batch_size):
        ro = sample_rollouts(policy, reference, None, reward_model, tokenizer,
                             prompts[i : i + cfg.rollout_batch_size], cfg, gen)
        scores.append(ro.scores.cpu())
        kls.append(((ro.logprobs - ro.ref_logprobs) * ro.response_mask).sum(-1).cpu())
        lens.append(ro.response_mask.sum(-1).float().cpu())
    if not scores:
        return {"mean_reward": float("nan"), "kl": float("nan"), "mean_response_len": 0.0, "n_prompts": 0.0}
    return {"mean_reward": float(torch.cat(scores).mean()), "kl": float(torch.cat(kls).mean()),
            "mean_response_len": float(torch.cat(lens).mean()), "n_prompts": float(len(prompts))}
