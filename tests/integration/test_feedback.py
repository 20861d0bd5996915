"""SubmitFeedback: what lands in the Redis feedback stream, idempotency, and refusals."""

from __future__ import annotations

import threading
import uuid

import grpc
import pytest

from rlhf.v1 import policy_pb2, records_pb2
from tests.helpers import ServingStack

Kind = records_pb2.FeedbackEvent.Kind


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-feedback"), tiny_model_dir, metrics_port=-1)
    yield s
    s.close()


def generate(stack, prompt="Tell me about the sea.", n=2, user_id="u1"):
    req = policy_pb2.GenerateRequest(prompt=prompt, num_candidates=n, user_id=user_id,
                                     sampling=policy_pb2.SamplingParams(max_new_tokens=8))
    return stack.server.policy.Generate(req, timeout=60)


def stream_events(stack) -> dict[str, records_pb2.FeedbackEvent]:
    entries = stack.redis.xrange(stack.settings.key_prefix + "feedback")
    return {eid.decode(): records_pb2.FeedbackEvent.FromString(fields[b"event"]) for eid, fields in entries}


def feedback(stack, **kwargs):
    return stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(**kwargs), timeout=20)


def test_rating_is_stored_with_server_side_texts(stack):
    resp = generate(stack, prompt="Rate this one.")
    c = resp.candidates[0]
    ack = feedback(stack, rating=policy_pb2.Rating(response_id=c.response_id, thumbs_up=True), user_id="u1",
                   comment="nice")
    assert ack.feedback_id and not ack.duplicate
    event = stream_events(stack)[ack.feedback_id]
    assert event.kind == Kind.KIND_THUMBS_UP
    assert (event.prompt, event.response, event.response_id, event.model_version) == (
        "Rate this one.", c.text, c.response_id, "v0001")
    assert (event.user_id, event.comment, event.source) == ("u1", "nice", "api")
    assert event.created_at.seconds > 0
    down = feedback(stack, rating=policy_pb2.Rating(response_id=resp.candidates[1].response_id, thumbs_up=False),
                    user_id="u1")
    assert stream_events(stack)[down.feedback_id].kind == Kind.KIND_THUMBS_DOWN
    assert stack.redis.xrange(stack.settings.key_prefix + "feedback", min=down.feedback_id, max=down.feedback_id)[0][1][
        b"kind"] == b"KIND_THUMBS_DOWN"


def test_comparison_is_stored(stack):
    resp = generate(stack, prompt="Compare these.")
    a, b = resp.candidates
    ack = feedback(stack, comparison=policy_pb2.Comparison(chosen_response_id=b.response_id,
                                                           rejected_response_id=a.response_id), user_id="u1")
    event = stream_events(stack)[ack.feedback_id]
    assert event.kind == Kind.KIND_COMPARISON
    assert event.prompt == "Compare these."
    assert (event.response, event.response_id, event.model_version) == (b.text, b.response_id, "v0001")
    assert (event.rejected_response, event.rejected_response_id, event.rejected_model_version) == (
        a.text, a.response_id, "v0001")


def test_idempotent_retries_store_once(stack):
    c = generate(stack).candidates[0]
    key = uuid.uuid4().hex
    acks = [feedback(stack, rating=policy_pb2.Rating(response_id=c.response_id, thumbs_up=True), user_id="u1",
                     idempotency_key=key) for _ in range(5)]
    assert len({a.feedback_id for a in acks}) == 1
    assert [a.duplicate for a in acks] == [False, True, True, True, True]
    matching = [e for e in stream_events(stack).values() if e.idempotency_key == key]
    assert len(matching) == 1
    # the same key from another user (on a response served to them) is a different item
    c2 = generate(stack, user_id="u2").candidates[0]
    other = feedback(stack, rating=policy_pb2.Rating(response_id=c2.response_id, thumbs_up=True), user_id="u2",
                     idempotency_key=key)
    assert not other.duplicate and other.feedback_id != acks[0].feedback_id
    # without a key every call is new
    a = feedback(stack, rating=policy_pb2.Rating(response_id=c.response_id, thumbs_up=True), user_id="u1")
    b = feedback(stack, rating=policy_pb2.Rating(response_id=c.response_id, thumbs_up=True), user_id="u1")
    assert a.feedback_id != b.feedback_id and not a.duplicate and not b.duplicate


def test_concurrent_retries_store_once(stack):
    a, b = generate(stack).candidates
    key = uuid.uuid4().hex
    acks, errors = [], []
    barrier = threading.Barrier(8)

    def send():
        barrier.wait(10)
        try:
            acks.append(feedback(stack, comparison=policy_pb2.Comparison(
                chosen_response_id=a.response_id, rejected_response_id=b.response_id), user_id="u1",
                idempotency_key=key))
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(acks) == 8
    assert len({x.feedback_id for x in acks}) == 1
    assert sum(not x.duplicate for x in acks) == 1
    assert len([e for e in stream_events(stack).values() if e.idempotency_key == key]) == 1


def expect(code, fn, *words):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == code, err.value.details()
    for w in words:
        assert w in err.value.details()
    return err.value.details()


def test_refusals(stack):
    before = len(stream_events(stack))
    resp = generate(stack, prompt="First prompt.")
    other = generate(stack, prompt="Second prompt.", n=1)
    rid = resp.candidates[0].response_id
    expect(grpc.StatusCode.NOT_FOUND,
           lambda: feedback(stack, rating=policy_pb2.Rating(response_id="no-such-id", thumbs_up=True)), "no-such-id")
    expect(grpc.StatusCode.NOT_FOUND, lambda: feedback(stack, user_id="u1", comparison=policy_pb2.Comparison(
        chosen_response_id=rid, rejected_response_id="missing")), "missing")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(stack, user_id="u1", comparison=policy_pb2.Comparison(
        chosen_response_id=rid, rejected_response_id=other.candidates[0].response_id)), "different prompts")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(stack, user_id="u1", comparison=policy_pb2.Comparison(
        chosen_response_id=rid, rejected_response_id=rid)), "same response")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(stack, user_id="u1", comparison=policy_pb2.Comparison(
        chosen_response_id=rid)), "rejected_response_id")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(stack), "empty")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(stack, user_id="u"), "rating")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(stack, rating=policy_pb2.Rating(thumbs_up=True)),
           "response_id")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(
        stack, rating=policy_pb2.Rating(response_id=rid, thumbs_up=True), user_id="u1", comment="x" * 5000), "comment")
    expect(grpc.StatusCode.INVALID_ARGUMENT, lambda: feedback(
        stack, rating=policy_pb2.Rating(response_id=rid, thumbs_up=True), user_id="u1", idempotency_key="k" * 300),
        "idempotency_key")
    assert len(stream_events(stack)) == before  # nothing was stored by any refused call
    # and the server keeps taking valid feedback
    assert feedback(stack, rating=policy_pb2.Rating(response_id=rid, thumbs_up=True), user_id="u1").feedback_id
