"""LoRA building blocks (training/lora.py, lora_ppo.py): targets, the auto rule, the disabled-adapter
reference, the shared-backbone value head, gradient accumulation."""

from __future__ import annotations

import pytest
import torch

from training.config import PPOConfig
from training.lora import (FinetuneConfig, PolicyValue, attach_policy_adapter, count_parameters,
                           detect_target_modules, load_base)
from training.lora_ppo import lora_update, policy_terms
from training.rollout import Rollout

CPU = torch.device("cpu")


def test_targets_are_detected_from_the_architecture(tiny_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    assert detect_target_modules(load_base(tiny_model_dir, CPU)) == ["c_attn"]
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert detect_target_modules(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_auto_picks_lora_only_for_large_models(tiny_model_dir):
    n = count_parameters(tiny_model_dir)
    assert n == sum(p.numel() for p in load_base(tiny_model_dir, CPU).parameters()) or n > 0
    assert not FinetuneConfig("auto").uses_lora(n)
    assert FinetuneConfig("auto").uses_lora(100_000_000)
    assert FinetuneConfig("lora").uses_lora(n) and not FinetuneConfig("full").uses_lora(10**10)
    with pytest.raises(ValueError):
        FinetuneConfig("half").uses_lora(n)


def trained_policy(tiny_model_dir) -> PolicyValue:
    torch.manual_seed(1)
    pv = PolicyValue(attach_policy_adapter(load_base(tiny_model_dir, CPU), FinetuneConfig("lora")))
    with torch.no_grad():
        for name, p in pv.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)  # as after some updates
    return pv


def test_reference_is_exactly_the_base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    pv = trained_policy(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, 400, (3, 11))
    with torch.no_grad():
        want = base(input_ids=ids).logits
        with pv.model.disable_adapter():
            got = pv.model(input_ids=ids).logits
        policy = pv.model(input_ids=ids).logits
    assert torch.equal(got, want)
    assert not torch.allclose(policy, want, atol=1e-3)
    trainable = {n for n, p in pv.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "value_head" in n for n in trainable)


def test_one_forward_gives_logits_and_zero_initial_values(tiny_model_dir):
    pv = trained_policy(tiny_model_dir)
    q, r = torch.randint(1, 400, (2, 5)), torch.randint(1, 400, (2, 4))
    ids, mask = torch.cat([q, r], 1), torch.ones(2, 9, dtype=torch.long)
    logits, logprobs, values = policy_terms(pv, ids, mask, r, torch.ones_like(r), 5, 1.0)
    assert logits.shape == (2, 4, pv.model.get_base_model().config.vocab_size)
    naive = torch.log_softmax(pv.model(input_ids=ids).logits[:, 4:8], -1).gather(2, r.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs, naive, atol=1e-5)
    assert torch.equal(values, torch.zeros(2, 4))  # detail 20: the value head starts at 0


def test_micro_batches_accumulate_to_the_mini_batch_gradient(tiny_model_dir):
    torch.manual_seed(0)
    q, r = torch.randint(1, 400, (4, 5)), torch.randint(1, 400, (4, 6))
    ones = torch.ones_like(r)
    ro = Rollout(q, torch.ones_like(q), r, ones, torch.full((4, 6), -3.0), torch.full((4, 6), -3.0),
                 torch.zeros(4, 6), torch.zeros(4), torch.ones(4, dtype=torch.bool))
    adv, ret = torch.randn(4, 6), torch.randn(4, 6)
    cfg = PPOConfig(rollout_batch_size=4, mini_batch_size=4, ppo_epochs=1, temperature=0.7)  # the old default
    params_after = []
    for micro in (None, 2):
        pv = trained_policy(tiny_model_dir)
        params = [p for p in pv.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1)
        lora_update(pv, opt, params, ro, adv, ret, cfg, FinetuneConfig("lora", micro_batch_size=micro),
                    torch.Generator().manual_seed(0))
        params_after.append(torch.cat([p.detach().flatten() for p in params]))
    assert torch.allclose(params_after[0], params_after[1], atol=1e-5)


def test_sampling_pass_gives_the_same_logprobs_and_values_as_a_forward(tiny_model_dir):
    from transformers import AutoTokenizer

    from training.lora_ppo import sample_with_terms
    from training.rollout import encode_prompt, left_pad, pad_id_of

    pv = trained_policy(tiny_model_dir)
    with torch.no_grad():
        torch.nn.init.normal_(pv.value_head.weight, std=0.1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = PPOConfig(max_new_tokens=8, temperature=0.7)
    q, qm = left_pad([encode_prompt(tok, p, 32) for p in ("Hi, where is my order?", "Refund please")],
                     pad_id_of(tok))
    r, rm, _, logprobs, values = sample_with_terms(pv, q, qm, tok, cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, want_lp, want_v = policy_terms(pv, torch.cat([q, r], 1), torch.cat([qm, rm], 1), r, rm, q.shape[1], 0.7)
    assert torch.allclose(logprobs, want_lp * rm, atol=1e-4)
    assert torch.allclose(values, want_v, atol=1e-4)


def test_round_mode_full_is_unchanged_for_small_models_and_lora_is_opt_in(tiny_model_dir, tmp_path):
    from registry import Registry
    from rlhf_core.settings import Settings
    from tests.helpers import publish_model
    from workers.lora_rounds import decide

    registry = Registry(tmp_path / "registry")
    v1 = publish_model(registry, tiny_model_dir)
    v2 = publish_model(registry, tiny_model_dir, parent=v1)  # a full PPO version: its reference is v1
    auto, lora = Settings(registry=registry.root), Settings(registry=registry.root, finetune="lora")
    assert decide(registry, auto, v1, v1)["finetune"] == "full"  # 141k parameters < 20M
    assert decide(registry, lora, v1, v1) == {"finetune": "lora", "base_version": v1,
                                              "base_parameters": decide(registry, auto, v1, v1)["base_parameters"]}
    assert decide(registry, lora, v2, v1)["finetune"] == "full"  # the base would not be the reference
    big = Settings(registry=registry.root, lora_auto_min_params=1000)
    assert decide(registry, big, v1, v1)["finetune"] == "lora"
