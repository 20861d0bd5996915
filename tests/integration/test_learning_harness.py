"""The simulated-annotator harness against a real server (no worker): feedback lands in the stream,
evaluation yields a win rate with a CI, and a forced round with no worker times out cleanly."""

from __future__ import annotations

import json
import random

import redis

from benchmarks.learning.annotators import EmpatheticAnnotator
from benchmarks.learning.evaluation import evaluate, refused_by_gold
from benchmarks.learning.harness import LearningConfig, collect_feedback, run
from benchmarks.learning.trigger import model_summary, trigger_and_wait
from benchmarks.learning.users import Crowd, spam
from rlhf.v1 import policy_pb2, records_pb2
from training.text_format import heldout_prompts, train_prompts

SHORT = policy_pb2.SamplingParams(max_new_tokens=24)


def test_collect_feedback_writes_one_stream_entry_per_prompt(server, settings):
    prompts = train_prompts()[:4]
    counts = collect_feedback(server.policy, prompts, EmpatheticAnnotator(noise=0.1), random.Random(0),
                              rating_share=0.5, user_id="sim-test", sampling=SHORT)
    assert counts.generations == 4
    assert counts.submitted == 4 and counts.duplicates == 0
    assert counts.thumbs_up + counts.thumbs_down == counts.ratings
    r = redis.Redis.from_url(settings.redis_url)
    assert r.xlen(settings.key_prefix + "feedback") == 4


def test_evaluate_returns_win_rate_with_ci(server):
    prompts = heldout_prompts()[:2]
    ev = evaluate(server.policy, prompts, EmpatheticAnnotator(), version="", sft_version="v0001",
                  samples_per_prompt=2, seed=0, sampling=SHORT)
    assert ev["version"] == "v0001"
    assert 0.0 <= ev["win_rate_lo"] <= ev["win_rate"] <= ev["win_rate_hi"] <= 1.0
    assert ev["n_prompts"] == 2
    for side in ("served", "sft"):
        s = ev[side]
        assert 0.0 <= s["distinct_1"] <= 1.0 and 0.0 <= s["distinct_2"] <= 1.0
        assert s["mean_length"] >= 0 and abs(sum(s["styles"].values()) - 1.0) < 1e-9


def test_refused_candidate_is_judged_by_gold_against_its_parent_and_sft(server):
    prompts = heldout_prompts()[:2]
    ev = evaluate(server.policy, prompts, EmpatheticAnnotator(), version="", sft_version="v0001",
                  samples_per_prompt=2, seed=0, sampling=SHORT)
    same = refused_by_gold(server.policy, prompts, EmpatheticAnnotator(), "v0001", ev, 0, SHORT, None)
    # the parent itself, sampled with the same seeds: every win is matched by a loss
    assert same["win_rate_vs_parent"] == 0.5 and same["win_rate_vs_sft"] == 0.5
    assert same["win_rate_vs_parent_lo"] <= 0.5 <= same["win_rate_vs_parent_hi"]
    # a parent whose every sample scored below anything the annotator gives: the candidate's fresh samples
    # beat it everywhere, while the comparison with SFT still uses SFT's own samples
    hopeless = {**ev, "served": {**ev["served"], "scores": [[-1e9] * len(g) for g in ev["served"]["scores"]]}}
    beaten = refused_by_gold(server.policy, prompts, EmpatheticAnnotator(), "v0001", hopeless, 0, SHORT, None)
    assert beaten["win_rate_vs_parent"] == 1.0 and beaten["win_rate_vs_parent_lo"] == 1.0
    assert beaten["win_rate_vs_sft"] == 0.5
    gone = refused_by_gold(server.policy, prompts, EmpatheticAnnotator(), "v0999", ev, 0, SHORT, None)
    assert gone["version"] == "v0999" and gone["error"].startswith("NOT_FOUND")


def _drop_queued_task(redis_url: str, keys: list[str], task_id: str) -> None:
    """Remove our own queued round from the broker so no worker picks it up later."""
    r = redis.Redis.from_url(redis_url)
    for key in keys:
        if r.type(key) != b"list":
            continue
        for raw in r.lrange(key, 0, -1):
            if json.loads(raw).get("headers", {}).get("id") == task_id:
                r.lrem(key, 1, raw)


def test_trigger_and_wait_times_out_without_a_worker(server, settings):
    out = trigger_and_wait(server.admin, server.policy, timeout=1.5, poll_s=0.5)
    _drop_queued_task(settings.redis_url, [settings.key_prefix + "celery:default", "default"], out.task_id)
    assert out.task_id and out.timed_out and out.new_version is None and not out.rejected
    assert out.previous_version == "v0001"
    info = server.policy.GetModel(policy_pb2.GetModelRequest(model_version="v0001"))
    assert model_summary(info)["version"] == "v0001"


def test_run_with_zero_rounds_evaluates_the_baseline(server):
    cfg = LearningConfig(target=server.target, rounds=0, eval_prompts=2, eval_samples=2, max_new_tokens=16)
    result = run(cfg, log=lambda _: None)
    [base] = result["rounds"]
    assert base["round"] == 0 and base["version"] == "v0001"
    # served == SFT here, and both sides use the same seeds
    assert base["eval"]["sft_version"] == "v0001" and 0.0 <= base["win_rate"] <= 1.0
    # the second evaluation, on prompts the gate never sees: the same version with the same seeds, so every
    # sample is matched by an identical one and the win rate is exactly even
    assert base["win_rate_fresh"] == 0.5 and base["win_rate_fresh_lo"] <= 0.5 <= base["win_rate_fresh_hi"]
    assert base["sft_distinct_2_fresh"] == base["distinct_2_fresh"]


def test_thumbs_only_crowd_and_spammer_send_their_own_user_ids(server, settings):
    prompts = train_prompts()[:6]
    crowd = Crowd("sim-crowd", users=3, adversarial_fraction=1 / 3, thumbs_only=True)
    rng = random.Random(1)
    counts = collect_feedback(server.policy, prompts, EmpatheticAnnotator(noise=0.1), rng, user_id="unused",
                              sampling=SHORT, crowd=crowd)
    assert counts.generations == counts.ratings == 6 and counts.comparisons == 0
    assert 1 <= counts.users <= 3
    sent = spam(server.policy, prompts[0], EmpatheticAnnotator(), crowd, 20, rng, SHORT)
    assert sent["sent"] == 20 and sent["acknowledged"] + sent["refused"] == 20
    r = redis.Redis.from_url(settings.redis_url)
    users = set()
    for _, fields in r.xrange(settings.key_prefix + "feedback"):
        event = records_pb2.FeedbackEvent.FromString(fields[b"event"])
        users.add(event.user_id)
    assert users <= {*crowd.user_ids, crowd.spammer_id} and crowd.spammer_id in users


def test_feedback_temperature_applies_to_the_users_generates_only(server, settings):
    # greedy feedback candidates: both candidates of every Generate are the same text, so every item is a
    # rating and counted as an identical pair; the evaluation keeps sampling at the server's temperature
    cfg = LearningConfig(target=server.target, rounds=1, feedback_per_round=4, rating_share=0.0, eval_prompts=2,
                         eval_samples=4, max_new_tokens=16, feedback_temperature=0.0, round_timeout_s=1.5)
    result = run(cfg, log=lambda _: None)
    base, first = result["rounds"]
    _drop_queued_task(settings.redis_url, [settings.key_prefix + "celery:default", "default"],
                      first["outcome"]["task_id"])
    fb = first["feedback"]
    assert fb["generations"] == 4 and fb["identical_pairs"] == 4 and fb["comparisons"] == 0
    samples = [t for g in base["eval"]["served"]["scores"] for t in g]
    assert len(samples) == 2 * 4 and len(set(samples)) > 2  # sampled, not greedy: the scores differ


def test_until_promoted_runs_every_round_while_nothing_is_promoted(server, settings):
    # no worker: each forced round times out, SFT stays served, so no round ends the run early (the e2e
    # smoke sees the other side: it ends at the first promotion)
    cfg = LearningConfig(target=server.target, rounds=2, feedback_per_round=2, rating_share=1.0, eval_prompts=1,
                         eval_samples=2, max_new_tokens=8, round_timeout_s=1.0, until_promoted=True)
    result = run(cfg, log=lambda _: None)
    for rec in result["rounds"][1:]:
        _drop_queued_task(settings.redis_url, [settings.key_prefix + "celery:default", "default"],
                          rec["outcome"]["task_id"])
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2] and not result["notes"]
    assert all(r["version"] == "v0001" and r["outcome"]["timed_out"] for r in result["rounds"][1:])
    assert len({r["score_fresh"] for r in result["rounds"]}) == 1  # one served version: one fresh evaluation
