"""The whole loop through the real API: feedback -> Celery round -> new version -> hot-swap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import grpc
import redis
import pytest

from rlhf.v1 import admin_pb2, policy_pb2
from tests.e2e.conftest import FAST_ROUND, LENIENT_GATE, stream_stats, wait_for
from training.text_format import train_prompts

pytestmark = pytest.mark.timeout(400)

# The tiny model and 2-step rounds cannot show a significant win over the parent: these tests check
# the loop's plumbing, so the gate's statistical checks are relaxed (tests/integration/test_gate_round.py
# tests the gate itself). The reward-gain and KL checks keep the meaning the tests give them.


def give_feedback(server, prompts: list[str]) -> int:
    """Two candidates per prompt; the longer answer wins (a consistent, learnable taste)."""
    for i, prompt in enumerate(prompts):
        resp = server.policy.Generate(policy_pb2.GenerateRequest(
            prompt=prompt, num_candidates=2, user_id="e2e",
            sampling=policy_pb2.SamplingParams(max_new_tokens=24, seed=i)))
        a, b = resp.candidates
        chosen, rejected = (a, b) if len(a.text) >= len(b.text) else (b, a)
        ack = server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
            comparison=policy_pb2.Comparison(chosen_response_id=chosen.response_id,
                                             rejected_response_id=rejected.response_id),
            user_id="e2e", idempotency_key=f"fb-{prompt}"))
        assert ack.feedback_id and not ack.duplicate
    return len(prompts)


class Traffic:
    """Generate calls from a background thread for the whole test: every one must succeed."""

    def __init__(self, server):
        self.server, self.versions, self.errors = server, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                resp = self.server.policy.Generate(policy_pb2.GenerateRequest(
                    prompt="My order hasn't arrived. What should I do?",
                    sampling=policy_pb2.SamplingParams(max_new_tokens=8)), timeout=60)
                self.versions.append(resp.model_version)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)


def current_version(server) -> str:
    return server.policy.GetModel(policy_pb2.GetModelRequest()).model_version


def test_round_publishes_promotes_and_hot_swaps(server, settings, start_worker):
    worker = start_worker(**LENIENT_GATE, RLHF_GATE_MIN_REWARD_GAIN="-1e9")  # the gate passes on reward; KL bound still applies
    submitted = give_feedback(server, train_prompts()[:12])
    traffic = Traffic(server)
    task = server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True))
    assert task.task_id
    wait_for(lambda: worker.alive() and current_version(server) == "v0002", 240, 0.5, "hot-swap to v0002")
    wait_for(lambda: traffic.versions[-3:] == ["v0002"] * 3, 60, what="new requests on v0002")
    traffic.finish()
    assert traffic.errors == []
    assert traffic.versions[0] == "v0001"
    info = server.policy.GetModel(policy_pb2.GetModelRequest())
    assert info.parent_version == "v0001" and info.current
    assert info.promotion.promoted and info.promotion.kl_bound == settings.kl_bound
    assert [c.name for c in info.promotion.checks][:2] == ["judge_accuracy", "win_rate"]  # every check recorded
    assert all(c.passed for c in info.promotion.checks) and 0.0 <= info.promotion.win_rate <= 1.0
    assert info.training.num_comparisons == submitted
    assert 0.0 <= info.training.reward_model_accuracy <= 1.0
    assert stream_stats(settings)["pending"] == 0
    metrics = server.metrics_text()
    assert "rlhf_model_swaps_total 1.0" in metrics


def test_round_failing_the_gate_keeps_the_current_version(server, settings, start_worker):
    start_worker(**LENIENT_GATE, RLHF_GATE_MIN_REWARD_GAIN="1e9")
    give_feedback(server, train_prompts()[:8])
    result = subprocess.run(  # the operator's way: `rlhf-serve train --now --force --wait`
        [sys.executable, "-m", "rlhf_serve.cli", "train", "--now", "--force", "--wait",
         "--redis-url", settings.redis_url, "--registry", str(settings.registry), "--key-prefix", settings.key_prefix],
        capture_output=True, text=True, timeout=300,  # the flags alone say where: no RLHF_* in the environment
        env={k: v for k, v in os.environ.items() if not k.startswith("RLHF_") and k != "REDIS_URL"})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["version"] == "v0002" and summary["promoted"] is False
    models = {m.model_version: m for m in server.admin.ListModels(admin_pb2.ListModelsRequest()).models}
    assert not models["v0002"].promotion.promoted and "not above" in models["v0002"].promotion.reason
    assert models["v0002"].training.num_comparisons == 8
    time.sleep(2.5)  # longer than the servers' pointer poll
    assert current_version(server) == "v0001"


def test_beat_starts_a_round_once_enough_feedback_arrived(server, settings, start_worker, start_beat):
    worker = start_worker(**LENIENT_GATE, RLHF_GATE_MIN_REWARD_GAIN="-1e9", RLHF_MIN_NEW_FEEDBACK="6")
    start_beat(RLHF_SCHEDULE_S="1", RLHF_MIN_NEW_FEEDBACK="6")
    give_feedback(server, train_prompts()[:3])
    time.sleep(8)  # several beat ticks with 3 < 6 new items: no round
    assert [m.model_version for m in server.admin.ListModels(admin_pb2.ListModelsRequest()).models] == ["v0001"]
    give_feedback(server, train_prompts()[3:6])
    wait_for(lambda: worker.alive() and current_version(server) == "v0002", 240, 0.5, "a scheduled round")


def test_killed_worker_leaves_no_version_and_loses_no_feedback(server, settings, start_worker):
    slow = start_worker(**LENIENT_GATE, RLHF_PPO__STEPS="500", RLHF_GATE_MIN_REWARD_GAIN="-1e9")
    submitted = give_feedback(server, train_prompts()[:10])
    server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True))
    wait_for(lambda: _in_stage(settings, "ppo"), 180, 0.2, "the round to reach PPO")
    slow.kill()
    versions = settings.registry / "versions"
    assert sorted(p.name for p in versions.iterdir()) == ["v0001"]  # nothing half-written
    datasets = list((settings.registry / "datasets").glob("feedback-*.jsonl"))
    rows = [json.loads(line) for path in datasets for line in path.read_text().splitlines()]
    assert len({row["feedback_id"] for row in rows}) == submitted  # acknowledged only once saved
    start_worker(**LENIENT_GATE, RLHF_GATE_MIN_REWARD_GAIN="-1e9")
    wait_for(lambda: not _lock_held(settings), 30, 0.5, "the dead round's lock to lapse")
    server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True))
    wait_for(lambda: current_version(server) == "v0002", 240, 0.5, "the next round to publish")
    info = server.policy.GetModel(policy_pb2.GetModelRequest())
    assert info.training.num_comparisons == submitted  # every item, once
    assert sorted(p.name for p in versions.iterdir()) == ["v0001", "v0002"]


def _lock_held(settings) -> bool:
    return bool(redis.Redis.from_url(settings.redis_url).exists(settings.key_prefix + "train:lock"))


def _in_stage(settings, stage: str) -> bool:
    """The active round's heartbeat names `stage` and the lock has its short stage expiry: a worker
    killed now lets it lapse within RLHF_ROUND_LOCK_TTL_S. (Between two stages the lock carries the
    hour-long hand-off expiry while the next task waits in a queue: a kill there holds it that long.)"""
    r = redis.Redis.from_url(settings.redis_url)
    beats = [json.loads(v) for v in r.hvals(settings.key_prefix + "train:active")]
    ttl_ms = r.pttl(settings.key_prefix + "train:lock")
    stage_ttl_ms = float(FAST_ROUND["RLHF_ROUND_LOCK_TTL_S"]) * 1000
    return any(b.get("stage") == stage for b in beats) and 0 < ttl_ms <= stage_ttl_ms


def test_failed_round_frees_the_lock_and_leaves_the_registry_untouched(server, settings, start_worker):
    worker = start_worker()
    rounds_key = settings.key_prefix + "train:rounds"
    r = redis.Redis.from_url(settings.redis_url)
    server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True))  # forced, but nothing to train on
    record = wait_for(lambda: worker.alive() and r.lindex(rounds_key, 0), 120, 0.3, "the round to end")
    assert json.loads(record)["failed"] is True
    assert not _lock_held(settings)
    assert sorted(p.name for p in (settings.registry / "versions").iterdir()) == ["v0001"]
    assert current_version(server) == "v0001"


def redeliver_unacked(settings) -> None:
    """What Celery does once the visibility timeout passes: unacked messages go back to their queue."""
    from celery import Celery
    from rlhf_core.tasks import celery_connection_conf
    conf = celery_connection_conf(settings)
    conf["broker_transport_options"] = {**conf["broker_transport_options"], "visibility_timeout": 0}
    app = Celery("redeliver")
    app.conf.update(conf)
    with app.connection_for_write() as conn:
        conn.default_channel.qos.restore_visible(num=100)


def test_a_round_whose_worker_was_killed_is_abandoned_within_the_timeout(server, settings, start_worker, start_beat):
    fast_reaper = {"RLHF_ROUND_HEARTBEAT_TIMEOUT_S": "6", "RLHF_ROUND_REAP_INTERVAL_S": "1"}
    slow = start_worker(RLHF_PPO__STEPS="500", **fast_reaper)
    give_feedback(server, train_prompts()[:6])
    server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True))
    tmp = settings.registry / ".tmp"
    r = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: _in_stage(settings, "ppo"), 180, 0.2, "the round to run PPO")
    slow.kill()
    killed_at = time.monotonic()
    worker = start_worker(**fast_reaper)
    start_beat(RLHF_SCHEDULE_S="3600", **fast_reaper)
    rounds_key = settings.key_prefix + "train:rounds"
    record = json.loads(wait_for(lambda: worker.alive() and r.lindex(rounds_key, 0), 120, 0.3, "the reaper"))
    assert time.monotonic() - killed_at < 90  # heartbeat timeout + reap interval + worker start-up
    assert record["failed"] and record["abandoned"] and record["stage"] == "ppo"
    assert not _lock_held(settings) and not any(tmp.glob("round-*"))
    assert not r.hlen(settings.key_prefix + "train:active")
    # an hour later Celery redelivers the dead PPO task: it must see its round is gone and stop
    redeliver_unacked(settings)
    wait_for(lambda: "is no longer active" in worker.output(), 60, 0.3, "the stale task to stop")
    assert "stale ppo stops" in worker.output() or "stale reward_model stops" in worker.output()
    time.sleep(2)
    assert r.llen(rounds_key) == 1  # recorded once, not revived
    assert sorted(p.name for p in (settings.registry / "versions").iterdir()) == ["v0001"]
    assert not _lock_held(settings) and not any(tmp.glob("round-*"))
