"""Worker building blocks on real Redis: backlog, snapshots, the round lock, the gate, metrics."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
import redis

from rlhf.v1 import records_pb2
from rlhf_core.feedback_log import APPEND_SCRIPT
from rlhf_core.keys import Keys
from workers import metrics, rounds, snapshots
from workers.lock import LockLost, RoundLock


@pytest.fixture
def r(settings):
    return redis.Redis.from_url(settings.redis_url)


def add_feedback(r, keys: Keys, n: int, start: int = 0) -> list[str]:
    append = r.register_script(APPEND_SCRIPT)
    ids = []
    for i in range(start, start + n):
        event = records_pb2.FeedbackEvent(kind=records_pb2.FeedbackEvent.KIND_COMPARISON, prompt=f"prompt {i}",
                                           response=f"good {i}", rejected_response=f"bad {i}")
        fid, _ = append(keys=[keys.feedback_stream, ""], args=[60, "KIND_COMPARISON", event.SerializeToString()])
        ids.append(fid.decode())
    return ids


def test_snapshot_acks_only_what_it_saved_and_dedupes(settings, r, tmp_path):
    keys = Keys(settings.key_prefix)
    add_feedback(r, keys, 5)
    assert snapshots.backlog(r, keys) == 5
    snap = snapshots.take_snapshot(r, keys, tmp_path)
    assert snap.count == 5 and snapshots.backlog(r, keys) == 0
    add_feedback(r, keys, 3, start=5)
    # a crash after reading but before saving: the entries stay pending and are taken next time
    r.xreadgroup(keys.consumer_group, snapshots.CONSUMER, {keys.feedback_stream: ">"}, count=10)
    assert snapshots.backlog(r, keys) == 3
    snap2 = snapshots.take_snapshot(r, keys, tmp_path)
    assert snap2.count == 3 and snapshots.backlog(r, keys) == 0
    # a crash between saving and acking writes the same entries twice: they count once
    (tmp_path / "feedback-dup.jsonl").write_text(Path(snap2.path).read_text())
    pairs, ratings, info = snapshots.load_training_set(tmp_path, window=100)
    assert len(pairs) == 8 and ratings == [] and info["num_comparisons"] == 8
    assert {p.prompt for p in pairs} == {f"prompt {i}" for i in range(8)}


def test_training_window_keeps_the_newest(settings, r, tmp_path):
    keys = Keys(settings.key_prefix)
    add_feedback(r, keys, 6)
    snapshots.take_snapshot(r, keys, tmp_path)
    pairs, _, info = snapshots.load_training_set(tmp_path, window=2)
    assert [p.prompt for p in pairs] == ["prompt 4", "prompt 5"]


def test_should_run_needs_enough_new_feedback(settings, r):
    ctx = rounds.Context(settings.model_copy(update={"min_new_feedback": 3}))
    add_feedback(r, ctx.keys, 2)
    assert rounds.should_run(ctx, force=False) == (False, 2)
    assert rounds.should_run(ctx, force=True) == (True, 2)
    add_feedback(r, ctx.keys, 1, start=2)
    assert rounds.should_run(ctx, force=False) == (True, 3)


def test_round_lock_is_exclusive_and_lapses(settings, r):
    lock = RoundLock(r, Keys(settings.key_prefix).round_lock, ttl_s=0.5)
    assert lock.acquire("a") and not lock.acquire("b")
    with lock.held("a"):
        time.sleep(1.0)  # the heartbeat keeps it past its ttl
        assert lock.holder() == "a"
    with pytest.raises(LockLost):
        lock.check("b")
    time.sleep(0.7)  # no heartbeat: a dead holder's lock lapses
    assert lock.holder() is None and lock.acquire("b")
    assert not lock.release("a") and lock.release("b")


def test_worker_metrics_endpoint():
    port = metrics.serve(0)
    metrics.observe_round({"promoted": True, "seconds": 42.0, "reward_model": {"train_loss": 0.6, "heldout_accuracy": 0.75},
                           "ppo": {"mean_reward": 1.5, "kl": 2.5, "clipfrac": 0.1}})
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'rlhf_training_rounds_total{outcome="promoted"} 1.0' in text
    assert "rlhf_reward_model_accuracy 0.75" in text and "rlhf_ppo_kl 2.5" in text
    assert "rlhf_round_duration_seconds_count 1.0" in text


def test_a_round_loads_its_training_set_once(settings, registry_v1, r, monkeypatch):
    """The snapshot stage loads the training set (every snapshot file, hygiene); the reward stage
    trains on that same set, read from the round's work dir, without loading it again."""
    from training.config import RewardConfig

    ctx = rounds.Context(settings.model_copy(update={"reward": RewardConfig(epochs=1), "device": "cpu"}))
    add_feedback(r, ctx.keys, 12)
    loads = []
    load = snapshots.load_training_set
    monkeypatch.setattr(snapshots, "load_training_set", lambda *a, **kw: loads.append(load(*a, **kw)) or loads[-1])
    state = rounds.snapshot(ctx, rounds.begin(ctx, "load-once"))
    assert state.data["num_comparisons"] == 12 and len(loads) == 1
    pairs, ratings, _ = loads[0]
    assert rounds.training_set(ctx, state) == (pairs, ratings)  # every field (weights, users) read back as loaded
    state = rounds.train_reward(ctx, state)
    assert len(loads) == 1
    assert state.reward_model["n_pairs"] + state.judge["n_pairs"] == 12
    rounds.finish(ctx, state.round_id, state.record())


def test_reserved_prompts_are_never_ppo_prompts(settings, tmp_path):
    """A prompt users sent that is listed in RLHF_RESERVED_PROMPTS_FILE (an evaluation set) stays out of PPO's
    rollouts, like the shipped held-out prompts; other recent prompts are used."""
    from workers.rounds import Context, training_prompts
    from training.text_format import heldout_prompts
    reserved = tmp_path / "reserved.txt"
    reserved.write_text("Where is my evaluation parcel?\n\n  How do I keep this out?  \n", encoding="utf-8")
    ctx = Context(settings.model_copy(update={"reserved_prompts_file": reserved}))
    sent = ["Where is my evaluation parcel?", "How do I keep this out?", heldout_prompts()[0], "A real user prompt."]
    ctx.redis.lpush(ctx.keys.recent_prompts, *sent)
    prompts = training_prompts(ctx, seed=0)
    assert "A real user prompt." in prompts
    assert not set(sent[:3]) & set(prompts)
    assert "A real user prompt." in training_prompts(Context(settings), seed=0)
    assert "Where is my evaluation parcel?" in training_prompts(Context(settings), seed=0)  # not reserved there


def test_gate_prompts_file_adds_gate_prompts_that_ppo_never_samples(settings, tmp_path):
    """RLHF_GATE_PROMPTS_FILE: the gate judges on the shipped held-out prompts and then the file's (once each, in
    file order, at most RLHF_EVAL_PROMPTS in all); PPO's rollouts never sample the file's prompts."""
    from workers.rounds import Context, eval_prompts, training_prompts
    from training.text_format import heldout_prompts
    held = heldout_prompts()
    gate = tmp_path / "gate.txt"
    gate.write_text(f"Is my gate parcel late?\n\n  {held[0]}  \nWhere did my gate order go?\n", encoding="utf-8")
    ctx = Context(settings.model_copy(update={"gate_prompts_file": gate, "eval_prompts": 100}))
    assert eval_prompts(ctx) == held + ["Is my gate parcel late?", "Where did my gate order go?"]
    capped = Context(settings.model_copy(update={"gate_prompts_file": gate, "eval_prompts": len(held) + 1}))
    assert eval_prompts(capped) == held + ["Is my gate parcel late?"]
    assert eval_prompts(Context(settings.model_copy(update={"eval_prompts": 100}))) == held
    ctx.redis.lpush(ctx.keys.recent_prompts, "Is my gate parcel late?", "A real user prompt.")
    prompts = training_prompts(ctx, seed=0)
    assert "A real user prompt." in prompts and "Is my gate parcel late?" not in prompts
