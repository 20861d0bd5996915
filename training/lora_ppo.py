"""PPO with LoRA on one shared base (training/lora.py): rollouts, updates, evaluation.

Same math and IMPLEMENTATION_DETAILS as training/ppo_trainer.py; what differs is where the
quantities come from, so that one base serves four roles and no forward is done twice:

- the sampling pass itself gives log pi_old (B, T) *and* V(s_t) (value head on the same hidden
  states), so a rollout needs no policy forward; one forward per mini-batch in the update gives
  both again (with gradients); the LM head runs only on response positions;
- log pi_ref comes from the same base with the adapter disabled, once per rollout; the reward
  normalisation (detail 6) samples that reference on the full loop's fixed prompt set, with the
  full loop's own functions (``reference.fixed_reference_stats``);
- r(x, y) comes from the same base with the reward adapter active, once per rollout;
- on CUDA every forward runs under bf16 autocast; a mini-batch may be split into micro-batches
  (gradient accumulation) so ``mini_batch_size`` does not depend on memory.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from training.config import PPOConfig
from training.devices import autocast, resolve_device
from training.lora import (POLICY_ADAPTER, AdapterDisabled, AdapterRewardModel, FinetuneConfig, PolicyValue,
                           adapter_active, attach_policy_adapter, attach_reward, is_adapter_dir, load_base)
from training.ppo import (clipped_policy_loss, clipped_value_loss, entropy_from_logits, logprobs_from_logits,
                          masked_mean)
from training.rollout import Rollout, encode_prompt, generate, left_pad, pad_id_of, position_ids


def response_slice(x: Tensor, query_len: int) -> Tensor:
    """(B, T, ...) the positions s_t predicting each response token from a (B, Q+T, ...) tensor."""
    return x[:, query_len - 1 : -1]


def policy_terms(pv: PolicyValue, ids: Tensor, mask: Tensor, response: Tensor, response_mask: Tensor,
                 query_len: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(B, T, V) logits / temperature, (B, T) log pi(a_t|s_t), (B, T) V(s_t): one forward."""
    T = response.shape[1]
    logits, values = pv(ids, mask, logits_to_keep=T + 1)  # (B, T+1, V), (B, Q+T): no LM head on the prompt
    logits = logits[:, :-1].float() / temperature  # (B, T, V) at s_t, detail 5
    logprobs = logprobs_from_logits(logits, response)  # (B, T)
    return logits, logprobs, response_slice(values, query_len) * response_mask


@torch.no_grad()
def sample_with_terms(pv: PolicyValue, query: Tensor, query_mask: Tensor, tokenizer: Any, cfg: PPOConfig,
                      generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample responses and read log pi_old(a_t|s_t) and V(s_t) off the sampling pass itself.

    The decoding forward already computed the logits and final hidden state at every s_t, so no
    second policy forward is needed (numerically equal to one up to float rounding: see
    tests/unit/test_lora.py). Same seeding as ``training.rollout.generate`` (detail 21).
    Returns ``(response, response_mask, has_eos, logprobs, values)``, each (B, T) or (B,).
    """
    from transformers import GenerationConfig

    from training.rollout import truncate_at_eos

    gen_cfg = GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0, max_new_tokens=cfg.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id_of(tokenizer), return_dict_in_generate=True,
        output_logits=True, output_hidden_states=True)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    with torch.random.fork_rng(devices=[query.device] if query.device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = pv.model.generate(input_ids=query, attention_mask=query_mask, generation_config=gen_cfg)
    tokens = out.sequences[:, query.shape[1] :]  # (B, T) a_t
    logits = torch.stack(out.logits, dim=1).float() / cfg.temperature  # (B, T, V) raw logits at s_t, detail 5
    hidden = torch.stack([step[-1][:, -1] for step in out.hidden_states], dim=1)  # (B, T, H) final h at s_t
    mask, has_eos = truncate_at_eos(tokens, tokenizer.eos_token_id)  # (B, T), (B,)
    tokens = torch.where(mask.bool(), tokens, torch.full_like(tokens, pad_id_of(tokenizer)))
    logprobs = logprobs_from_logits(logits, tokens) * mask  # (B, T) log pi_old(a_t|s_t)
    values = pv.value_head(hidden.to(pv.value_head.weight.dtype)).squeeze(-1).float() * mask  # (B, T) V(s_t)
    return tokens, mask, has_eos, logprobs, values


def reference_logprobs(pv: PolicyValue, ids: Tensor, mask: Tensor, response: Tensor, query_len: int,
                       temperature: float) -> Tensor:
    """(B, T) log pi_ref(a_t|s_t): the same base with the adapter disabled (detail 8)."""
    with pv.model.disable_adapter():
        logits = pv.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                          logits_to_keep=response.shape[1] + 1).logits  # (B, T+1, V): no lm_head on the prompt
    return logprobs_from_logits(logits[:, :-1].float() / temperature, response)


def policy_context(pv: PolicyValue, adapter: str | None) -> contextlib.AbstractContextManager:
    """Run the policy as adapter ``adapter`` ("default" is the trained one), or as the base (None)."""
    if adapter is None:
        return pv.model.disable_adapter()
    if adapter == pv.model.active_adapter:
        return contextlib.nullcontext()
    return adapter_active(pv.model, adapter)


@torch.no_grad()
def lora_rollouts(pv: PolicyValue, reward: AdapterRewardModel, tokenizer: Any, prompts: list[str],
                  cfg: PPOConfig, generator: torch.Generator, adapter: str | None = POLICY_ADAPTER) -> Rollout:
    """Sample one response per prompt and compute log pi_old, log pi_ref, V and r (details 4-8).

    ``adapter`` picks the sampling policy (None: the base itself, whose KL to the reference is 0).
    """
    device = pv.value_head.weight.device
    seqs = [encode_prompt(tokenizer, p, cfg.max_prompt_len) for p in prompts]
    query, query_mask = (t.to(device) for t in left_pad(seqs, pad_id_of(tokenizer)))  # (B, Q)
    Q, values = query.shape[1], None
    with autocast(device):
        with policy_context(pv, adapter):
            if adapter is not None:  # log pi_old and V from the sampling pass (no second forward)
                response, response_mask, has_eos, logprobs, values = sample_with_terms(
                    pv, query, query_mask, tokenizer, cfg, generator)
            else:
                response, response_mask, has_eos = generate(pv.model, query, query_mask, tokenizer, cfg, generator)
            ids = torch.cat([query, response], dim=1)  # (B, Q+T)
            mask = torch.cat([query_mask, response_mask], dim=1)  # (B, Q+T)
        ref_logprobs = reference_logprobs(pv, ids, mask, response, Q, cfg.temperature)  # (B, T)
        if adapter is None:
            logprobs = ref_logprobs
        scores = reward(ids, mask).float()  # (B,) r(x, y)
    return Rollout(query, query_mask, response, response_mask, logprobs * response_mask,
                   ref_logprobs * response_mask, values, scores, has_eos)


def lora_losses(pv: PolicyValue, ro: Rollout, idx: Tensor, advantages: Tensor, returns: Tensor,
                cfg: PPOConfig) -> tuple[Tensor, dict[str, float]]:
    """Joint loss L = L^CLIP + c_vf L^VF - c_ent H on rows ``idx`` (one forward for pi and V)."""
    q, qm, r, rm = ro.query[idx], ro.query_mask[idx], ro.response[idx], ro.response_mask[idx]
    ids, mask = torch.cat([q, r], dim=1), torch.cat([qm, rm], dim=1)  # (b, Q+T)
    logits, logprobs, values = policy_terms(pv, ids, mask, r, rm, q.shape[1], cfg.temperature)
    pg_loss, clipfrac, approxkl = clipped_policy_loss(logprobs, ro.logprobs[idx], advantages[idx], rm, cfg.cliprange)
    vf_loss, vf_clipfrac = clipped_value_loss(values, ro.values[idx], returns[idx], rm, cfg.cliprange_value)
    entropy = masked_mean(entropy_from_logits(logits.detach()), rm) if cfg.ent_coef == 0 else \
        masked_mean(entropy_from_logits(logits), rm)  # () mean per-token H(pi)
    loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy  # details 13, 15
    stats = {"policy_loss": float(pg_loss.detach()), "value_loss": float(vf_loss.detach()), "clipfrac": float(clipfrac),
             "vf_clipfrac": float(vf_clipfrac), "approxkl": float(approxkl), "entropy": float(entropy.detach())}
    return loss, stats


def micro_batches(idx: Tensor, micro: int | None) -> list[Tensor]:
    """``idx`` split into chunks of at most ``micro`` rows (gradient accumulation)."""
    return list(idx.split(micro)) if micro and micro < len(idx) else [idx]


def lora_update(pv: PolicyValue, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], ro: Rollout,
                advantages: Tensor, returns: Tensor, cfg: PPOConfig, ft: FinetuneConfig,
                gen: torch.Generator) -> dict[str, float]:
    """``cfg.ppo_epochs`` passes of shuffled mini-batches, each accumulated over micro-batches (detail 14, 17)."""
    device = pv.value_head.weight.device
    B = ro.response.shape[0]
    all_stats: list[dict[str, float]] = []
    stopped = False
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=gen).to(device)
        for start in range(0, B, cfg.mini_batch_size):
            idx = perm[start : start + cfg.mini_batch_size]
            optimizer.zero_grad(set_to_none=True)
            parts = []
            for micro in micro_batches(idx, ft.micro_batch_size):
                with autocast(device):
                    loss, stats = lora_losses(pv, ro, micro, advantages, returns, cfg)
                if not parts and all_stats and cfg.kl_stop is not None and stats["approxkl"] > cfg.kl_stop:
                    stopped = True
                    break
                (loss * (len(micro) / len(idx))).backward()  # mean over the mini-batch's rows
                parts.append((stats, len(micro)))
            if stopped:
                break
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)  # detail 18
            optimizer.step()
            all_stats.append({k: sum(s[k] * n for s, n in parts) / len(idx) for k in parts[0][0]})
        if stopped:
            break
    means = {k: sum(s[k] for s in all_stats) / len(all_stats) for k in all_stats[0]}
    return {**means, "updates": float(len(all_stats)), "early_stopped": float(stopped)}


def build_lora_policy(base_dir: str | Path, policy_dir: str | Path, ft: FinetuneConfig,
                      device: torch.device, trainable: bool = True) -> PolicyValue:
    """Base + policy adapter (continued from ``policy_dir`` when it is an adapter) + value head."""
    base = load_base(base_dir, device)
    adapter = policy_dir if is_adapter_dir(policy_dir) else None
    return PolicyValue(attach_policy_adapter(base, ft, adapter, trainable=trainable))


def run_lora_ppo(base_dir: str | Path, policy_dir: str | Path, reward_dir: str | Path, prompts: list[str],
                 cfg: PPOConfig, ft: FinetuneConfig, log: Callable[[str], Any] = print,
                 norm_prompts: list[str] | None = None) -> tuple[PolicyValue, list[dict[str, float]]]:
    """PPO on a LoRA adapter; the reference is ``base_dir`` (adapter disabled). Returns the policy and metrics.

    ``norm_prompts``: the fixed prompt set of the reward normalisation, as in ``run_ppo`` (detail 6):
    the gain/bias come from the reference's samples on it, never from the adapter's rollouts.
    """
    from training.ppo_trainer import ppo_iterations
    from training.reference import fixed_reference_stats
    from transformers import AutoTokenizer

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    pv = build_lora_policy(base_dir, policy_dir, ft, device)
    reward = attach_reward(pv.model, reward_dir, tokenizer)
    params = [p for p in pv.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)  # detail 19: adapter + value head only
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    perm_gen = torch.Generator().manual_seed(cfg.seed)
    with autocast(device):  # detail 6: the reference (base, adapter disabled) on the fixed prompt set
        ref = fixed_reference_stats(AdapterDisabled(pv.model), reward, tokenizer, prompts, cfg, norm_prompts)

    def sample(batch_prompts: list[str]) -> Rollout:
        return lora_rollouts(pv, reward, tokenizer, batch_prompts, cfg, sample_gen)

    def update(ro: Rollout, advantages: Tensor, returns: Tensor) -> dict[str, float]:
        return lora_update(pv, optimizer, params, ro, advantages, returns, cfg, ft, perm_gen)

    # the KL budget restores the adapter and value head: the only trainable weights
    history = ppo_iterations(sample, update, pv, prompts, cfg, ref, log)
    return pv.eval(), history


def save_policy_adapter(pv: PolicyValue, out_dir: str | Path, tokenizer: Any = None) -> None:
    """The policy adapter only (peft layout: adapter_config.json + adapter_model.safetensors)."""
    pv.model.save_pretrained(str(out_dir), selected_adapters=["default"])
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
