"""Redis outages and a full Redis, against a private redis-server (never the shared one):
feedback answers UNAVAILABLE / RESOURCE_EXHAUSTED, Generate keeps serving (its responses marked
as not ratable and counted), everything recovers without a server restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import grpc
import pytest
import redis

from rlhf.v1 import policy_pb2
from tests.helpers import ServingStack, metric_value, point_at

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


class PrivateRedis:
    """A throwaway redis-server on a free port (no persistence), which a test may stop and restart."""

    def __init__(self, *extra: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.extra, self.proc = extra, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", *self.extra], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis():
    servers = []

    def make(*extra):
        servers.append(PrivateRedis(*extra).start())
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def generate(stack, user_id="u"):
    return stack.server.policy.Generate(policy_pb2.GenerateRequest(
        prompt="Is the store open?", num_candidates=2, user_id=user_id,
        sampling=policy_pb2.SamplingParams(max_new_tokens=5)), timeout=60)


def rate(stack, rid, user_id="u", key=""):
    return stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        rating=policy_pb2.Rating(response_id=rid, thumbs_up=True), user_id=user_id, idempotency_key=key), timeout=20)


def refused(code, fn, *words):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == code, (err.value.code(), err.value.details())
    for w in words:
        assert w in err.value.details(), err.value.details()


def test_outage_degrades_and_recovers_without_restart(private_redis, tiny_model_dir, tmp_path):
    rds = private_redis()
    stack = ServingStack(rds.url, tmp_path / "reg", tiny_model_dir, metrics_port=0)
    try:
        before = generate(stack).candidates
        assert not any(c.feedback_unavailable for c in before)
        assert rate(stack, before[0].response_id, key="k1").feedback_id
        rds.stop()
        # feedback: UNAVAILABLE, retryable, says so
        refused(grpc.StatusCode.UNAVAILABLE, lambda: rate(stack, before[1].response_id, key="k2"),
                "unavailable", "retry")
        # Generate keeps serving from the loaded model; its responses say they cannot be rated
        during = [generate(stack) for _ in range(3)]
        assert all(c.text is not None and c.feedback_unavailable and not c.feedback_token
                   for r in during for c in r.candidates)
        anon = stack.server.policy.Generate(policy_pb2.GenerateRequest(
            prompt="Anonymous?", sampling=policy_pb2.SamplingParams(max_new_tokens=3)), timeout=60)
        assert anon.candidates[0].feedback_unavailable and not anon.candidates[0].feedback_token
        stream = list(stack.server.policy.GenerateStream(policy_pb2.GenerateRequest(
            prompt="Stream?", sampling=policy_pb2.SamplingParams(max_new_tokens=3)), timeout=60))
        assert [c for c in stream if c.finish_reason][-1].feedback_unavailable
        text = stack.server.metrics_text()
        assert metric_value(text, "rlhf_generation_records_dropped_total") == 8
        assert metric_value(text, "grpc_server_handled_total", grpc_method="SubmitFeedback",
                            grpc_code="UNAVAILABLE") == 1
        # Redis comes back (empty: no persistence here); the same server recovers by itself
        rds.start()
        point_at(stack.settings, stack.v1)
        after = generate(stack).candidates
        assert not any(c.feedback_unavailable for c in after)
        ack = rate(stack, after[0].response_id, key="k3")
        assert ack.feedback_id and not ack.duplicate
        assert stack.server.policy.GetModel(policy_pb2.GetModelRequest(), timeout=20).model_version == "v0001"
    finally:
        stack.close()


def test_full_redis_refuses_feedback_cleanly(private_redis, tiny_model_dir, tmp_path):
    rds = private_redis("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    # no rate limit here, so that the append script itself meets the full Redis
    stack = ServingStack(rds.url, tmp_path / "reg", tiny_model_dir, metrics_port=0, feedback_rate_per_s=0)
    filler = redis.Redis.from_url(rds.url)
    try:
        ready = generate(stack).candidates
        stream_len = filler.xlen(stack.settings.key_prefix + "feedback")
        n = 0
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            for n in range(1000):  # fill Redis to its limit
                filler.set(f"filler:{n}", b"x" * 100_000)
        refused(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: rate(stack, ready[0].response_id, key="full"),
                "full", "maxmemory", "retry later")
        assert filler.xlen(stack.settings.key_prefix + "feedback") == stream_len  # nothing half-stored
        served = generate(stack).candidates  # still serving, flagged
        assert all(c.feedback_unavailable for c in served)
        # room again: the same key now stores the feedback once
        filler.delete(*[f"filler:{k}" for k in range(n + 1)])
        ack = rate(stack, ready[0].response_id, key="full")
        assert ack.feedback_id and not ack.duplicate
        assert rate(stack, ready[0].response_id, key="full").duplicate
        assert not any(c.feedback_unavailable for c in generate(stack).candidates)
    finally:
        stack.close()
        filler.close()
