"""The independent promotion gate through workers.rounds, on real Redis with the tiny model.

A reward-hacked candidate (it repeats one word and never ends) is refused even though PPO's reward
model, trained on poisoned feedback, prefers it; a near-chance judge refuses; every figure lands on
the version and in `rlhf-serve models list`.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid

import pytest
import redis
import torch

from registry.pointer import current_version
from rlhf.v1 import records_pb2
from rlhf_serve.commands import cmd_models
from rlhf_core.feedback_log import APPEND_SCRIPT
from training.config import PPOConfig, RewardConfig
from training.gate import split_prompts
from training.text_format import load_dataset
from workers import rounds

pytestmark = pytest.mark.timeout(600)
DEGENERATE = " ".join(["sorry"] * 30)
SMALL_ROUND = dict(ppo=PPOConfig(steps=1, rollout_batch_size=8, max_new_tokens=24), eval_prompts=8,
                   gate_samples_per_prompt=2, reward=RewardConfig(epochs=2), device="cpu")


def honest_rows() -> list[tuple[str, str]]:
    """(prompt, a real answer) for each training prompt of the shipped data."""
    return list({row["prompt"]: row["response"] for row in load_dataset("train")}.items())


def append(r, settings, prompt: str, chosen: str, rejected: str, user: str) -> None:
    event = records_pb2.FeedbackEvent(kind=records_pb2.FeedbackEvent.KIND_COMPARISON, prompt=prompt, response=chosen,
                                       rejected_response=rejected, user_id=user)
    r.register_script(APPEND_SCRIPT)(keys=[settings.key_prefix + "feedback", ""],
                                     args=[60, "KIND_COMPARISON", event.SerializeToString()])


def hacked_candidate(parent_dir, out_dir, prompts: list[str]) -> None:
    """The parent fine-tuned to answer every prompt with one repeated word and no EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from training.rollout import encode_prompt

    tok = AutoTokenizer.from_pretrained(parent_dir)
    model = AutoModelForCausalLM.from_pretrained(parent_dir).train()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    target = tok(" " + DEGENERATE, add_special_tokens=False)["input_ids"][:40]
    for step in range(40):
        prompt_ids = encode_prompt(tok, prompts[step % len(prompts)], 40)
        ids = torch.tensor([prompt_ids + target])
        labels = torch.tensor([[-100] * len(prompt_ids) + target])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def run(ctx, state, stages):
    for stage in stages:
        started = time.perf_counter()
        state = stage(ctx, state)
        print(f"{stage.__name__}: {time.perf_counter() - started:.1f}s")
    return state


def hacked_round(settings, **update):
    """PPO's half of the feedback is poisoned (the spam wins), the judge's half is honest; the candidate
    is the reward-hacked one. Returns the context, the rows, the judge's prompts and the round's summary."""
    ctx = rounds.Context(settings.model_copy(update={**SMALL_ROUND, **update}))
    r = redis.Redis.from_url(settings.redis_url)
    rows = honest_rows()
    policy_half, judge_half = split_prompts([p for p, _ in rows], settings.seed)
    for prompt, answer in rows:
        good, bad = (DEGENERATE, answer) if prompt in policy_half else (answer, DEGENERATE)
        append(r, settings, prompt, good, bad, "u1")
        append(r, settings, prompt, good, bad[: len(bad) // 2], "u2")
    state = run(ctx, rounds.begin(ctx, uuid.uuid4().hex[:12]), [rounds.snapshot, rounds.train_reward])
    assert state.judge["n_prompts"] == len(judge_half) and state.reward_model["n_prompts"] == len(policy_half)
    started = time.perf_counter()
    hacked_candidate(ctx.registry.path(state.parent), ctx.workdir(state.round_id) / "policy", list(judge_half))
    print(f"hacked candidate: {time.perf_counter() - started:.1f}s")
    return ctx, rows, judge_half, run(ctx, state, [rounds.evaluate, rounds.publish])


def test_reward_hacked_candidate_is_refused_and_every_figure_is_recorded(settings, registry_v1, capsys):
    ctx, rows, judge_half, summary = hacked_round(settings)
    r = redis.Redis.from_url(settings.redis_url)

    assert summary.promoted is False and summary.version == "v0002"
    assert current_version(r, ctx.keys, ctx.registry) == "v0001"
    p = ctx.registry.manifest("v0002").promotion
    failed = [c.name for c in p.checks if not c.passed]
    assert p.reason.startswith(failed[0] + ":")
    assert {"win_rate", "eos_rate", "distinct_2"} <= set(failed), p.reason
    assert p.length_ratio > 1.5  # every answer runs into the 24-token cap
    # the judge is competent on honest feedback (its own held-out split)...
    assert summary.judge["heldout_accuracy"] >= settings.gate_min_judge_accuracy
    # ...and the floor reads its accuracy on everything it never trained on, the poisoned half included:
    # there it disagrees with the feedback, which pulls the recorded figure down (a refusal either way)
    assert p.judge_accuracy < summary.judge["heldout_accuracy"]
    assert p.policy_rm_candidate_reward > p.policy_rm_parent_reward  # PPO's reward model was hacked...
    assert p.candidate_reward < p.parent_reward and p.win_rate < 0.5  # ...the independent judge was not
    assert p.candidate_eos_rate == 0.0 and p.parent_eos_rate > 0.5
    assert p.eval_prompts == 8 and p.samples_per_prompt == 2 and p.distinct_2_ratio < 0.5
    t = ctx.registry.manifest("v0002").training
    assert t.judge_model_prompts == len(judge_half) and 0.0 <= t.judge_model_accuracy <= 1.0
    assert t.reward_model_pairs + t.judge_model_pairs == 2 * len(rows)
    assert t.reward_model_members == 1  # one policy reward model unless RLHF_POLICY_RM_ENSEMBLE says more

    assert cmd_models(argparse.Namespace(action="list"), ctx.settings) == 0
    listing = capsys.readouterr().out
    assert "win=" in listing and "distinct-2=" in listing and p.reason in listing
    assert p.judge_members == 1 and not p.judge_member_win_rates and "judges=" not in listing


def test_an_ensemble_of_judges_refuses_the_hacked_candidate_and_records_each_member(settings, registry_v1, capsys):
    """RLHF_JUDGE_ENSEMBLE=3 (detail 24): three judges on the honest half, the gate on their mean score."""
    ctx, _, judge_half, summary = hacked_round(settings, judge_ensemble=3)
    assert summary.promoted is False
    assert summary.judge["members"] == 3 and len(summary.judge["member_heldout_accuracy"]) == 3
    # measured on the poisoned half only (the members trained on each other's held-out splits)
    assert summary.judge["unseen_accuracy"] == summary.judge["cross_accuracy"]
    assert len(summary.judge["member_cross_accuracy"]) == 3
    p = ctx.registry.manifest(summary.version).promotion
    assert p.judge_members == 3 and len(p.judge_member_win_rates) == 3
    assert all(w < 0.5 for w in p.judge_member_win_rates)  # every honest judge sees through the hack
    assert p.win_rate < 0.5 and p.judge_accuracy == pytest.approx(summary.judge["cross_accuracy"])
    split_prompts_count = p.judge_disagreement * p.eval_prompts  # a share of the gate's 8 prompts
    assert split_prompts_count == pytest.approx(round(split_prompts_count)) and 0 <= split_prompts_count <= 8
    assert p.policy_rm_candidate_reward > p.policy_rm_parent_reward
    assert cmd_models(argparse.Namespace(action="list"), ctx.settings) == 0
    assert "judges=3  member win rates=" in capsys.readouterr().out


def test_an_ensemble_of_policy_reward_models_trains_ppo_and_is_recorded(settings, registry_v1, capsys):
    """RLHF_POLICY_RM_ENSEMBLE=2 (detail 25): two reward models on the policy half; PPO optimises their mean;
    the version records the count, and the gate still judges with its own judge."""
    ctx = rounds.Context(settings.model_copy(update={**SMALL_ROUND, "policy_rm_ensemble": 2}))
    r = redis.Redis.from_url(settings.redis_url)
    for prompt, answer in honest_rows():
        append(r, settings, prompt, answer, DEGENERATE, "u1")
    state = run(ctx, rounds.begin(ctx, uuid.uuid4().hex[:12]), [rounds.snapshot, rounds.train_reward])
    saved = ctx.workdir(state.round_id) / "reward_model"
    assert (saved / "ensemble.json").exists() and (saved / "member-1").is_dir()
    assert state.reward_model["members"] == 2 and len(state.reward_model["member_heldout_accuracy"]) == 2
    assert state.judge.get("members", 1) == 1  # RLHF_JUDGE_ENSEMBLE is a separate setting
    summary = run(ctx, state, [rounds.ppo, rounds.evaluate, rounds.publish])
    assert summary.ppo["steps"] == 1 and math.isfinite(summary.ppo["mean_reward"])
    t = ctx.registry.manifest(summary.version).training
    assert t.reward_model_members == 2
    assert t.reward_model_accuracy == pytest.approx(state.reward_model["heldout_accuracy"])  # the members' mean
    p = ctx.registry.manifest(summary.version).promotion
    assert p.judge_members == 1 and math.isfinite(p.policy_rm_candidate_reward)  # the ensemble scored the gate's samples
    assert cmd_models(argparse.Namespace(action="list"), ctx.settings) == 0
    assert f"(policy RM {t.reward_model_accuracy:.2f} x2)" in capsys.readouterr().out


def test_near_chance_judge_refuses_a_real_round(settings, registry_v1):
    ctx = rounds.Context(settings.model_copy(update={**SMALL_ROUND, "gate_win_margin": -1.0,
                                                     "gate_min_reward_gain": -1e9}))
    r = redis.Redis.from_url(settings.redis_url)
    for prompt, answer in honest_rows()[:30]:  # every pair both ways: no judge can beat 0.5 held out
        append(r, settings, prompt, answer, DEGENERATE, "u1")
        append(r, settings, prompt, DEGENERATE, answer, "u2")
    summary = run(ctx, rounds.begin(ctx, uuid.uuid4().hex[:12]),
                  [rounds.snapshot, rounds.train_reward, rounds.ppo, rounds.evaluate, rounds.publish])
    assert summary.promoted is False
    assert summary.reason.startswith("judge_accuracy: judge held-out accuracy"), summary.reason
    p = ctx.registry.manifest(summary.version).promotion
    assert p.judge_accuracy <= 0.5 and not p.checks[0].passed and p.checks[0].threshold == 0.55
    assert summary.ppo["missing_eos_penalty"] == -2.0 and summary.ppo["reward_gain"] > 0
    assert current_version(r, ctx.keys, ctx.registry) == "v0001"


def test_a_judge_without_feedback_refuses(settings, registry_v1):
    """A lone prompt goes to the policy half: the judge has nothing to learn from and the gate says so."""
    ctx = rounds.Context(settings.model_copy(update=SMALL_ROUND))
    r = redis.Redis.from_url(settings.redis_url)
    prompt, answer = honest_rows()[0]
    append(r, settings, prompt, answer, DEGENERATE, "u1")
    state = run(ctx, rounds.begin(ctx, uuid.uuid4().hex[:12]), [rounds.snapshot, rounds.train_reward])
    assert state.judge["n_pairs"] == 0 and state.judge["heldout_accuracy"] is None
    summary = run(ctx, parent_as_candidate(ctx, state), [rounds.evaluate, rounds.publish])
    assert summary.promoted is False
    assert summary.reason.startswith("judge_accuracy: the judge has no held-out accuracy"), summary.reason


def parent_as_candidate(ctx, state):
    """The round's candidate is a copy of its parent (no PPO): for tests of what the gate measures."""
    import shutil
    shutil.copytree(ctx.registry.path(state.parent), ctx.workdir(state.round_id) / "policy",
                    ignore=shutil.ignore_patterns("manifest.json"))
    return state


def test_the_gate_also_samples_the_prompts_of_its_prompts_file(settings, registry_v1, tmp_path):
    """RLHF_GATE_PROMPTS_FILE reaches the evaluate stage: the version records 20 held-out + 2 file prompts."""
    from training.text_format import heldout_prompts
    gate = tmp_path / "gate.txt"
    gate.write_text("Is my gate parcel late?\nWhere did my gate order go?\n", encoding="utf-8")
    ctx = rounds.Context(settings.model_copy(update={**SMALL_ROUND, "gate_prompts_file": gate, "eval_prompts": 100}))
    prompt, answer = honest_rows()[0]
    append(redis.Redis.from_url(settings.redis_url), settings, prompt, answer, DEGENERATE, "u1")
    state = run(ctx, rounds.begin(ctx, uuid.uuid4().hex[:12]), [rounds.snapshot, rounds.train_reward])
    summary = run(ctx, parent_as_candidate(ctx, state), [rounds.evaluate, rounds.publish])
    assert ctx.registry.manifest(summary.version).promotion.eval_prompts == len(heldout_prompts()) + 2
