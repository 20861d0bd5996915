"""Smoke version of the learning benchmark: the real stack (server + Celery worker on Redis), the
simulated empathetic annotator giving feedback through the public API, one training round, and
the promoted version scoring higher than SFT under the annotator's gold score."""

from __future__ import annotations

import json

import pytest

from benchmarks.learning import report
from benchmarks.learning.harness import LearningConfig, run
from benchmarks.learning.stack import Stack, StackConfig
from training.text_format import heldout_prompts, train_prompts

pytestmark = pytest.mark.timeout(300)

# One small round that the tiny test model learns from reliably (seeds 0, 1, 2).
SMOKE_TRAINING = {"ppo_steps": 6, "ppo_batch_size": 16, "ppo_max_new_tokens": 32, "ppo_lr": 3e-4, "kl_coef": 0.02,
                  "reward_epochs": 2, "reward_lr": 3e-4, "eval_prompts": 16}


@pytest.mark.parametrize("seed", [0])
def test_feedback_through_the_api_yields_a_better_promoted_version(redis_url, tiny_model_dir, tmp_path, seed):
    stack_cfg = StackConfig(redis_url=redis_url, model_dir=tiny_model_dir, seed=seed, device="cpu",
                            registry=tmp_path / "registry", log_dir=tmp_path, training=SMOKE_TRAINING,
                            max_new_tokens_default=32)
    cfg = LearningConfig(annotator="empathetic", noise=0.1, rounds=1, feedback_per_round=48, rating_share=0.0,
                         eval_samples=4, max_new_tokens=32, round_timeout_s=200, seed=seed,
                         train_prompts=train_prompts()[:24], heldout_prompts=heldout_prompts()[:8])
    with Stack(stack_cfg, log=lambda _: None) as stack:
        cfg.target, cfg.sft_version = stack.target, stack.sft_version
        result = run(cfg, log=print, on_poll=stack.check_worker)
        assert stack.check_worker() is None
    base, trained = result["rounds"]
    assert base["version"] == "v0001" and base["win_rate"] == pytest.approx(0.5, abs=0.05)
    feedback = trained["feedback"]
    assert feedback["submitted"] == 48 and feedback["duplicates"] == 0
    outcome, model = trained["outcome"], trained["model"]
    assert not outcome["timed_out"], outcome
    assert outcome["new_version"] == "v0002" and model["promoted"], model["reason"]
    assert trained["version"] == "v0002" and model["num_comparisons"] == 48
    assert trained["score_served"] > trained["score_sft"], trained
    assert trained["win_rate"] > 0.5
    assert 0.0 <= trained["kl_to_sft"] <= model["kl_bound"]

    result.update(total_wall_s=result["wall_s"])
    head = report.write(result, tmp_path / "out")
    assert set(head["targets"]) == {"win_rate", "wall_time", "kl", "distinct_2"}
    assert json.loads((tmp_path / "out" / "result.json").read_text())["headline"]["final_version"] == "v0002"
    assert all((tmp_path / "out" / name).stat().st_size > 1000 for name in report.PLOTS)
    assert "| 1 | v0002 | v0002 promoted |" in (tmp_path / "out" / "REPORT.md").read_text()
