"""The round lock covers a queue wait: the `gpu` stage starts long after the short lock TTL
(`RLHF_ROUND_LOCK_TTL_S`) would have expired, and the round still completes."""

from __future__ import annotations

import json
import time

import pytest
import redis

from rlhf.v1 import admin_pb2
from rlhf_core.keys import Keys
from rlhf_serve.local import CeleryChild
from tests.e2e.conftest import FAST_ROUND, LENIENT_GATE, wait_for
from tests.e2e.test_training_loop import give_feedback
from training.text_format import train_prompts

pytestmark = pytest.mark.timeout(900)  # the tiny model fixture + a round, on a loaded machine
LOCK_TTL_S = 2


class QueueWorker(CeleryChild):
    """`rlhf-serve worker` consuming only the given queue(s), like the Kubernetes Deployments."""

    def __init__(self, settings, tmp_path, queues: str, **env_overrides: str):
        super().__init__("worker", settings, tmp_path, env={**FAST_ROUND, **env_overrides}, queues=queues)


def test_gpu_stage_starts_after_the_old_ttl_and_the_round_completes(server, settings, tmp_path):
    env = dict(RLHF_ROUND_LOCK_TTL_S=str(LOCK_TTL_S), RLHF_GATE_MIN_REWARD_GAIN="-1e9", **LENIENT_GATE)
    r, keys = redis.Redis.from_url(settings.redis_url), Keys(settings.key_prefix)
    workers = [QueueWorker(settings, tmp_path, "default", **env)]
    try:
        give_feedback(server, train_prompts()[:8])
        assert server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True)).task_id
        # snapshot ran on the default worker; train_reward_model now waits in `gpu` (no consumer yet)
        wait_for(lambda: workers[0].alive() and "rlhf.snapshot" in workers[0].output()
                 and "succeeded" in workers[0].output().split("rlhf.snapshot")[-1], 120, 0.5, "snapshot done")
        round_id = r.get(keys.round_lock).decode()
        time.sleep(3 * LOCK_TTL_S)  # the old lock (TTL only, extended only while a stage runs) lapsed here
        assert r.get(keys.round_lock) == round_id.encode(), "the lock lapsed while the task waited in `gpu`"
        assert r.pttl(keys.round_lock) > 60_000  # the hand-off TTL, not the stage TTL
        workers.append(QueueWorker(settings, tmp_path, "gpu", **env))
        summary = wait_for(lambda: all(w.alive() for w in workers) and r.lindex(keys.rounds, 0), 300, 0.5,
                           "the round to finish")
        summary = json.loads(summary)
        assert summary["round_id"] == round_id and not summary.get("failed"), summary
        assert summary["version"] == "v0002" and summary["promoted"]
        assert "LockLost" not in workers[1].output()
        assert r.get(keys.round_lock) is None  # released at publish
    finally:
        for worker in workers:
            worker.stop()
