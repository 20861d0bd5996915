"""A LoRA candidate is judged like a full one: the judge starts from the parent policy (an adapter
parent merged into its base), and the gate rescores the samples with PPO's own reward model too."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from registry import Registry
from tests.helpers import publish_model
from tests.lora_helpers import make_adapter_dir, publish_adapter
from training.config import PPOConfig
from workers import lora_rounds, rounds
from workers.state import RoundState


def test_lora_round_judge_starts_from_the_parent_and_the_gate_rescores_with_ppos_rm(settings, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.lora import FinetuneConfig, new_reward_model
    from training.reward_model import RewardModel

    registry = Registry(settings.registry)
    v1 = publish_model(registry, tiny_model_dir)
    v2 = publish_adapter(registry, make_adapter_dir(tiny_model_dir, tmp_path / "parent", seed=1), v1)
    state = RoundState(round_id="lora-gate", round_number=1, parent=v2, reference=v1, started_at=time.time(), seed=3,
                       finetune="lora", base_version=v1, judge={"heldout_accuracy": 0.9})

    trunk = lora_rounds.parent_trunk(registry, state, "cpu")  # an adapter parent: merged into its base
    ids = torch.randint(0, 400, (2, 9))
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         str(registry.path(v2)))(input_ids=ids).logits
        assert torch.allclose(trunk(input_ids=ids).logits, want, atol=1e-4)
    assert all(p.requires_grad for p in trunk.parameters())  # the judge fine-tunes it
    assert lora_rounds.parent_trunk(registry, replace(state, parent=v1), "cpu") == registry.path(v1)  # the base
    assert lora_rounds.parent_trunk(registry, replace(state, finetune="full"), "cpu") == registry.path(v2)

    ctx = rounds.Context(settings.model_copy(update=dict(
        finetune="lora", eval_prompts=4, gate_samples_per_prompt=2,
        ppo=PPOConfig(max_new_tokens=8, rollout_batch_size=4, mini_batch_size=4))))
    work, tok = ctx.workdir(state.round_id), AutoTokenizer.from_pretrained(tiny_model_dir)
    RewardModel.from_pretrained_backbone(trunk, tok).save(work / "judge")
    torch.manual_seed(0)
    new_reward_model(tiny_model_dir, FinetuneConfig("lora"), tok, 64, torch.device("cpu")).save(work / "reward_model")
    make_adapter_dir(tiny_model_dir, work / "policy", seed=2)
    assert ctx.lock.acquire(state.round_id)
    try:
        evaluation = rounds.evaluate(ctx, state).evaluation
    finally:
        ctx.lock.release(state.round_id)
    scores = [evaluation[n]["policy_rm_reward"] for n in ("candidate", "parent")]
    assert all(math.isfinite(s) and s != 0.0 for s in scores), scores  # rescored, as in a full round
    assert scores[0] != scores[1]
