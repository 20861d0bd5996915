"""Smoke version of the learning benchmark: the real stack (server + Celery worker on Redis), the
simulated product-story (empathetic) annotator giving feedback through the public API, training
rounds until one promotes (at most 3), and the promoted version scoring higher than SFT under the
annotator's gold score.

It runs on the built-in SFT model (built once, ~2-3 min on 2 cores, then cached in
benchmarks/.cache): the tests' tiny model (2 layers, 120 SFT steps) mostly emits fragments whose
reward model stays near chance (held-out accuracy 0.2-0.6 with 96-256 feedback items), so its
one-round outcome is a coin flip. With the built-in model one round takes ~30-60 s.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.learning import report, seeds
from benchmarks.learning.harness import LearningConfig, run
from benchmarks.learning.stack import Stack, StackConfig, builtin_sft_dir
from training.text_format import heldout_prompts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# One round of the settings that meet the targets in benchmarks/results/empathetic, made smaller.
# 384 feedback items: the cross-fitted judge trains on half of them, and with 256 its accuracy
# estimate (and so the gate) was a coin flip on this seed.
SMOKE_TRAINING = {"ppo_steps": 12, "ppo_batch_size": 32, "ppo_max_new_tokens": 48, "ppo_lr": 5e-5, "kl_coef": 0.15,
                  "reward_epochs": 2, "reward_lr": 3e-4, "eval_prompts": 20}


@pytest.fixture(scope="module")
def builtin_model():
    return builtin_sft_dir(0, log=lambda _: None)


# One short round is a coin flip per machine: the SFT model's bytes depend on the CPU that built it, and after
# one round of 384 items the cross-fitted judge is near its accuracy floor and the win rate's bound near 0.5.
# Seen: seed 0 passed in one round on an AMD EPYC build (sha256 456bc9bc...) and was refused on an Intel Xeon
# build (cf8f10ed..., as on the first machine: judge win rate 0.526, bound 0.487; the annotator preferred the
# candidate 0.678), then promoted in round 2. So the smoke gives the loop up to 3 rounds and ends at the first
# promotion: it checks that feedback through the API gets a version promoted that the annotator prefers to
# SFT, and that refused rounds change nothing that is served.
SMOKE_ROUNDS = 3


@pytest.mark.parametrize("seed", [0])
def test_feedback_through_the_api_yields_a_better_promoted_version(redis_url, builtin_model, tmp_path, seed):
    stack_cfg = StackConfig(redis_url=redis_url, model_dir=builtin_model, seed=seed, device="cpu",
                            registry=tmp_path / "registry", log_dir=tmp_path, training=SMOKE_TRAINING,
                            max_new_tokens_default=48)
    cfg = LearningConfig(annotator="empathetic", noise=0.1, rounds=SMOKE_ROUNDS, feedback_per_round=384,
                         rating_share=0.5, eval_samples=4, max_new_tokens=48, round_timeout_s=600, seed=seed,
                         heldout_prompts=heldout_prompts()[:10], eval_prompts=10, until_promoted=True)
    with Stack(stack_cfg, log=lambda _: None) as stack:
        cfg.target, cfg.sft_version = stack.target, stack.sft_version
        result = run(cfg, log=print, on_poll=stack.check_worker)
        stack.check_worker()
    base, *trained_rounds = result["rounds"]
    assert base["version"] == "v0001" and base["win_rate"] == pytest.approx(0.5, abs=0.05)
    for n, rec in enumerate(trained_rounds, start=1):
        feedback = rec["feedback"]
        assert feedback["submitted"] == 384 and feedback["duplicates"] == 0
        outcome = rec["outcome"]
        assert not outcome["timed_out"], outcome  # before reading the model: a timed-out round has none
        assert rec["model"]["version"] == f"v{n + 1:04d}"  # one candidate per round, refused or not
        assert rec["model"]["num_comparisons"] + rec["model"]["num_ratings"] == 384 * n  # every round's feedback
        if n < len(trained_rounds):  # refused: the reason is recorded and SFT is still what is served
            assert outcome["rejected"] and not rec["model"]["promoted"] and rec["model"]["reason"]
            assert rec["version"] == "v0001"
    trained = trained_rounds[-1]
    outcome, model = trained["outcome"], trained["model"]
    assert outcome["new_version"] == model["version"] and model["promoted"], [r["model"]["reason"]
                                                                              for r in trained_rounds]
    assert trained["version"] == model["version"]
    assert trained["score_served"] > trained["score_sft"], trained
    assert trained["win_rate"] > 0.5
    assert 0.0 <= trained["kl_to_sft"] <= model["kl_bound"]
    # the second evaluation, on 10 prompts no part of the loop saw: a figure of its own (no target)
    assert base["win_rate_fresh"] == 0.5 and 0.0 <= trained["win_rate_fresh"] <= 1.0

    result.update(total_wall_s=result["wall_s"])
    head = report.write(result, tmp_path / "out")
    assert set(head["targets"]) == {"win_rate", "wall_time", "kl", "distinct_2"}
    assert json.loads((tmp_path / "out" / "result.json").read_text())["headline"]["final_version"] == model["version"]
    assert all((tmp_path / "out" / name).stat().st_size > 1000 for name in report.PLOTS)
    n, v = len(trained_rounds), model["version"]
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert f"| {n} | {v} | {v} promoted |" in text
    assert f"fresh prompts (never seen by the gate) | {trained['win_rate_fresh']:.3f}" in text


def test_thumbs_only_users_with_a_spammer_never_get_a_worse_version_served(redis_url, builtin_model, tmp_path):
    """Issue 9: users who only give thumbs (no comparisons), each with its own user_id, plus one user
    repeating an opposite vote 50 times; the round learns from the ratings directly (pointwise loss).
    The spammer's votes count once, and whatever the round makes of 256 thumbs, no version worse than
    SFT is served: the gate either refuses with its reason recorded or promotes a better one. (In one
    round the cross-fitted judge is often near chance and refuses, seen twice here; that thumbs alone
    learn over rounds is measured by benchmarks.learning --thumbs-only, README "Does it learn?".)"""
    stack_cfg = StackConfig(redis_url=redis_url, model_dir=builtin_model, seed=0, device="cpu",
                            registry=tmp_path / "registry", log_dir=tmp_path, training=SMOKE_TRAINING,
                            max_new_tokens_default=48)
    cfg = LearningConfig(annotator="empathetic", noise=0.1, rounds=1, feedback_per_round=256, eval_samples=4,
                         max_new_tokens=48, round_timeout_s=600, seed=0, heldout_prompts=heldout_prompts()[:10],
                         users=8, thumbs_only=True, spam_votes=50, user_id="sim-smoke", fresh_eval=False)
    with Stack(stack_cfg, log=lambda _: None) as stack:
        cfg.target, cfg.sft_version = stack.target, stack.sft_version
        result = run(cfg, log=print, on_poll=stack.check_worker)
    _, trained = result["rounds"]
    feedback, spam = trained["feedback"], trained["spam"]
    assert feedback["ratings"] == 256 and feedback["comparisons"] == 0 and feedback["users"] == 8
    assert spam["sent"] == 50 and spam["acknowledged"] + spam["refused"] == 50
    model = trained["model"]
    # one vote per (user, response): the spammer's 50 votes on its response count once
    assert model["num_comparisons"] == 0 and 256 <= model["num_ratings"] <= 256 + 1
    if trained["outcome"]["new_version"]:
        assert trained["version"] == trained["outcome"]["new_version"] == "v0002" and model["promoted"]
        assert trained["score_served"] > trained["score_sft"] and trained["win_rate"] > 0.5, trained
    else:
        assert trained["version"] == "v0001" and not model["promoted"]
        assert model["reason"] and trained["win_rate"] == pytest.approx(0.5, abs=0.05), model["reason"]

    result.update(total_wall_s=result["wall_s"])
    report.write(result, tmp_path / "out" / "seed-0")
    agg = seeds.write(tmp_path / "out")
    assert agg["seeds"] == [0] and agg["figures"]["win_rate"]["mean"] == pytest.approx(trained["win_rate"])
    assert agg["targets"]["win_rate"]["threshold"] == report.ADVERSARIAL_TARGET  # a spammer: the adversarial target
    assert (tmp_path / "out" / "seeds.png").stat().st_size > 1000
