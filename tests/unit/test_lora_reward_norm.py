"""A LoRA round's reward normalisation (detail 6) comes from the reference (the base, adapter disabled)
on the fixed prompt set, exactly as the full loop computes it: not from the adapter's own rollouts."""

from __future__ import annotations

import pytest
import torch

from training.config import PPOConfig
from training.lora import FinetuneConfig, attach_policy_adapter, attach_reward, load_base, new_reward_model
from training.lora_ppo import run_lora_ppo
from training.ppo_trainer import load_causal_lm
from training.reference import norm_prompt_set, reference_reward_norm
from training.text_format import train_prompts
from tests.lora_helpers import make_adapter_dir

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, tmp_path_factory):
    """A reward adapter + head whose scores vary with the text (random non-zero B)."""
    from transformers import AutoTokenizer

    torch.manual_seed(3)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rm = new_reward_model(tiny_model_dir, FinetuneConfig("lora"), tok, 64, CPU)
    with torch.no_grad():
        for name, p in rm.peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    out = tmp_path_factory.mktemp("lora-rm") / "reward_model"
    rm.save(out)
    return out


def config() -> PPOConfig:
    return PPOConfig(steps=1, rollout_batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6,
                     temperature=1.0, seed=5, norm_samples=8, norm_seed=11, device="cpu", max_prompt_len=32)


def lora_gain_bias(base_dir, policy_dir, reward_dir, prompts) -> tuple[float, float, float]:
    _, history = run_lora_ppo(base_dir, policy_dir, reward_dir, prompts, config(), FinetuneConfig("lora"),
                              log=lambda *_: None)
    return history[0]["reward_gain"], history[0]["reward_bias"], history[0]["mean_reward"]


def test_lora_reward_norm_is_the_full_loops_reference_norm(tiny_model_dir, reward_dir, tmp_path):
    from transformers import AutoTokenizer

    prompts = train_prompts()[:16]
    fresh = lora_gain_bias(tiny_model_dir, tiny_model_dir, reward_dir, prompts)  # a new adapter (B = 0)
    adapter = make_adapter_dir(tiny_model_dir, tmp_path / "adapter", seed=7, scale=0.5)
    trained = lora_gain_bias(tiny_model_dir, adapter, reward_dir, prompts)  # continues an adapter that moved
    assert trained[2] != pytest.approx(fresh[2], rel=1e-3)  # its own rollouts do score differently...
    assert trained[:2] == pytest.approx(fresh[:2], rel=1e-6)  # ...but the normalisation is the reference's

    # the full loop's function, on the plain base and the same reward model, gives the same figures
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward = attach_reward(attach_policy_adapter(load_base(tiny_model_dir, CPU), FinetuneConfig("lora")), reward_dir)
    cfg = config()
    want = reference_reward_norm(load_causal_lm(tiny_model_dir, CPU, trainable=False), reward, tok,
                                 norm_prompt_set(prompts, cfg.norm_samples, cfg.norm_seed), cfg)
    assert fresh[:2] == pytest.approx(want, rel=1e-5)
    assert want[0] != pytest.approx(1.0) and want[1] != pytest.approx(0.0)  # a real normalisation


def test_explicit_norm_prompts_are_used(tiny_model_dir, reward_dir):
    from transformers import AutoTokenizer

    fixed = train_prompts()[40:48]
    _, history = run_lora_ppo(tiny_model_dir, tiny_model_dir, reward_dir, train_prompts()[:8], config(),
                              FinetuneConfig("lora"), log=lambda *_: None, norm_prompts=fixed)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward = attach_reward(attach_policy_adapter(load_base(tiny_model_dir, CPU), FinetuneConfig("lora")), reward_dir)
    want = reference_reward_norm(load_causal_lm(tiny_model_dir, CPU, trainable=False), reward, tok, fixed, config())
    assert (history[0]["reward_gain"], history[0]["reward_bias"]) == pytest.approx(want, rel=1e-5)


def test_lora_round_over_its_kl_budget_returns_the_last_adapter_within_it(tiny_model_dir, reward_dir):
    """The KL budget (detail 17) in the LoRA loop: the round ends at the first rollout batch whose KL is
    over the budget and its round-start KL, undoing the update that produced its sampler: the steps
    before it are the unconstrained run's, and the adapter is the one after those steps, bit for bit."""
    from dataclasses import replace

    prompts = train_prompts()[:8]
    cfg = replace(config(), steps=4, lr=5e-2)

    def lora_run(**kw):
        logs = []
        pv, history = run_lora_ppo(tiny_model_dir, tiny_model_dir, reward_dir, prompts, replace(cfg, **kw),
                                   FinetuneConfig("lora"), log=logs.append)
        return {n: p.detach().clone() for n, p in pv.named_parameters() if p.requires_grad}, history, logs

    _, free, _ = lora_run(kl_budget=None)
    start = free[0]["kl"]
    crossing = next((j for j in range(1, len(free)) if free[j]["kl"] > start), None)
    assert crossing is not None, [h["kl"] for h in free]  # lr 5e-2: the adapter moves away from the base
    weights, capped, logs = lora_run(kl_budget=-1.0, kl_budget_retries=0)  # below any KL: round-start KL counts
    assert capped == free[:crossing - 1]
    assert f"round ends with the policy of step {crossing - 1}" in logs[-1]
    want, _, _ = lora_run(kl_budget=None, steps=crossing - 1)
    assert weights.keys() == want.keys() and all(torch.equal(weights[n], want[n]) for n in want)


def test_lora_rounds_hold_the_diversity_floor_against_the_base(tiny_model_dir, reward_dir):
    """The LoRA loop takes the floor's reference distinct-2 from the base (adapter disabled) on the same fixed
    samples as the full loop, and each step's repeat-penalty weight is the dual step from that batch's ratio."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from training.diversity import floor_coef_step
    from training.reference import reference_stats

    prompts = train_prompts()[:8]
    cfg = replace(config(), steps=4, lr=5e-2, diversity_floor=1.0, diversity_lr=0.5, repeat_coef_max=0.5)
    _, history = run_lora_ppo(tiny_model_dir, tiny_model_dir, reward_dir, prompts, cfg, FinetuneConfig("lora"),
                              log=lambda *_: None)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward = attach_reward(attach_policy_adapter(load_base(tiny_model_dir, CPU), FinetuneConfig("lora")), reward_dir)
    ref = reference_stats(load_causal_lm(tiny_model_dir, CPU, trainable=False), reward, tok,
                          norm_prompt_set(prompts, cfg.norm_samples, cfg.norm_seed), cfg, distinct=True)
    assert ref.distinct_2 is not None and 0 < ref.distinct_2 <= 1
    coef = 0.0
    for h in history:
        assert h["distinct_2_ratio"] == pytest.approx(h["distinct_2"] / ref.distinct_2)
        coef = floor_coef_step(coef, h["distinct_2_ratio"], 1.0, 0.5, 0.5)
        assert h["repeat_coef"] == pytest.approx(coef)
