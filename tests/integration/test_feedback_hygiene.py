"""Feedback hygiene through the real API and the real snapshot path: who may rate what, anonymous
feedback tokens, the per-user rate limit, idempotency keys bound to content, one vote per
(user, response) and the round's weighted training set."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from rlhf.v1 import policy_pb2
from rlhf_core.keys import Keys
from tests.helpers import ServingStack
from workers import metrics as worker_metrics
from workers import snapshots


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-hygiene"), tiny_model_dir, metrics_port=-1,
                     feedback_rate_per_s=2.0, feedback_burst=4)
    yield s
    s.close()


def generate(stack, user_id="", prompt="Where is my parcel?", n=2):
    return stack.server.policy.Generate(policy_pb2.GenerateRequest(
        prompt=prompt, num_candidates=n, user_id=user_id, sampling=policy_pb2.SamplingParams(max_new_tokens=6)),
        timeout=60)


def rate(stack, rid, up=True, **kwargs):
    return stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        rating=policy_pb2.Rating(response_id=rid, thumbs_up=up), **kwargs), timeout=20)


def refused(code, fn, *words) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == code, (err.value.code(), err.value.details())
    for w in words:
        assert w in err.value.details(), err.value.details()
    return err.value


def stream_len(stack) -> int:
    return stack.redis.xlen(Keys(stack.settings.key_prefix).feedback_stream)


def test_only_the_user_served_may_rate(stack):
    c = generate(stack, user_id="alice").candidates[0]
    assert not c.feedback_token  # a user's responses are rated under their user_id, no token needed
    before = stream_len(stack)
    refused(grpc.StatusCode.PERMISSION_DENIED, lambda: rate(stack, c.response_id, user_id="mallory"),
            "another user", "user_id")
    refused(grpc.StatusCode.PERMISSION_DENIED, lambda: rate(stack, c.response_id), "another user")
    assert stream_len(stack) == before
    assert rate(stack, c.response_id, user_id="alice").feedback_id


def test_anonymous_responses_need_their_token(stack):
    a, b = generate(stack).candidates
    assert a.feedback_token and b.feedback_token and a.feedback_token != b.feedback_token
    before = stream_len(stack)
    refused(grpc.StatusCode.PERMISSION_DENIED, lambda: rate(stack, a.response_id), "feedback_token is missing")
    refused(grpc.StatusCode.PERMISSION_DENIED, lambda: rate(stack, a.response_id, feedback_token=b.feedback_token),
            "does not match")
    cmp = policy_pb2.Comparison(chosen_response_id=a.response_id, rejected_response_id=b.response_id)
    refused(grpc.StatusCode.PERMISSION_DENIED, lambda: stack.server.policy.SubmitFeedback(
        policy_pb2.FeedbackRequest(comparison=cmp, feedback_token=a.feedback_token), timeout=20),
        "rejected_feedback_token")
    assert stream_len(stack) == before
    assert rate(stack, a.response_id, feedback_token=a.feedback_token).feedback_id
    time.sleep(1.1)  # refused calls spent this response's bucket (burst 4) too
    ack = stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        comparison=cmp, feedback_token=a.feedback_token, rejected_feedback_token=b.feedback_token), timeout=20)
    assert ack.feedback_id and not ack.duplicate


def test_stream_final_chunks_carry_the_token(stack):
    chunks = list(stack.server.policy.GenerateStream(policy_pb2.GenerateRequest(
        prompt="Stream me.", sampling=policy_pb2.SamplingParams(max_new_tokens=4)), timeout=60))
    final = [c for c in chunks if c.finish_reason][-1]
    assert final.feedback_token and not final.feedback_unavailable
    assert rate(stack, final.response_id, feedback_token=final.feedback_token).feedback_id


def test_rate_limit_refuses_with_retry_hint(stack):
    c = generate(stack, user_id="flooder").candidates[0]
    acks, error = [], None
    for _ in range(20):
        try:
            acks.append(rate(stack, c.response_id, user_id="flooder"))
        except grpc.RpcError as exc:
            error = exc
            break
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 1 <= len(acks) <= 5  # the burst (4), plus at most one refill while sending
    assert "retry after" in error.details() and "rate limit" in error.details()
    retry_ms = int(dict(error.trailing_metadata())["retry-after-ms"])
    assert 0 < retry_ms <= 600
    # another user is not affected; the flooder gets a token back after the hinted wait
    d = generate(stack, user_id="calm").candidates[0]
    assert rate(stack, d.response_id, user_id="calm").feedback_id
    time.sleep(retry_ms / 1000 + 0.05)
    assert rate(stack, c.response_id, user_id="flooder").feedback_id


def test_idempotency_key_is_bound_to_its_content(stack):
    a, b = generate(stack, user_id="carol").candidates
    key = uuid.uuid4().hex
    first = rate(stack, a.response_id, up=True, user_id="carol", idempotency_key=key)
    again = rate(stack, a.response_id, up=True, user_id="carol", idempotency_key=key)
    assert again.duplicate and again.feedback_id == first.feedback_id
    before = stream_len(stack)
    refused(grpc.StatusCode.ALREADY_EXISTS,
            lambda: rate(stack, a.response_id, up=False, user_id="carol", idempotency_key=key),
            "already used for different feedback", "new key")
    refused(grpc.StatusCode.ALREADY_EXISTS,
            lambda: rate(stack, b.response_id, up=True, user_id="carol", idempotency_key=key), "new key")
    assert stream_len(stack) == before


def test_latest_vote_per_user_and_response_is_trained_on(stack, tmp_path):
    """Votes through the API; a snapshot; the round's training set keeps each user's latest vote."""
    prefix = stack.settings.key_prefix
    keys = Keys(prefix)
    snapshots.take_snapshot(stack.redis, keys, tmp_path / "old")  # earlier tests' feedback is not ours
    a, b = generate(stack, user_id="dave", prompt="Latest vote wins?").candidates
    rate(stack, a.response_id, up=True, user_id="dave", idempotency_key="d1")
    rate(stack, a.response_id, up=False, user_id="dave", idempotency_key="d2")  # changes their mind
    rate(stack, b.response_id, up=True, user_id="dave")
    cmp = dict(chosen_response_id=a.response_id, rejected_response_id=b.response_id)
    stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        comparison=policy_pb2.Comparison(**cmp), user_id="dave"), timeout=20)
    time.sleep(1.1)  # the bucket (burst 4) refills
    stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(comparison=policy_pb2.Comparison(
        chosen_response_id=b.response_id, rejected_response_id=a.response_id), user_id="dave"), timeout=20)
    snap = snapshots.take_snapshot(stack.redis, keys, tmp_path / "ds")
    assert snap.count == 5  # the stream keeps every vote (an audit log) ...
    pairs, ratings, info = snapshots.load_training_set(tmp_path / "ds", window=100)
    # ... the training set only the latest per (user, response) and per (user, pair)
    assert sorted((r.response, r.thumbs_up) for r in ratings) == sorted([(a.text, False), (b.text, True)])
    assert [(p.chosen, p.rejected) for p in pairs] == [(b.text, a.text)]
    assert info["superseded_votes"] == 2 and info["num_ratings"] == 2 and info["num_comparisons"] == 1
    assert {r.user_id for r in ratings} == {"dave"} and worker_metrics.SUPERSEDED_VOTES._value.get() == 2
