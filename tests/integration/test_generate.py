"""Generate and GenerateStream over real gRPC against the tiny model, records in real Redis."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from rlhf.v1 import policy_pb2, records_pb2
from rlhf_core.keys import Keys
from tests.helpers import ServingStack, metric_value, publish_model

PROMPT = "How do I make a cup of tea?"


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-generate"), tiny_model_dir)
    yield s
    s.close()


def gen(stack, prompt=PROMPT, timeout=60, **kwargs):
    sampling = kwargs.pop("sampling", None) or policy_pb2.SamplingParams(max_new_tokens=12)
    return stack.server.policy.Generate(policy_pb2.GenerateRequest(prompt=prompt, sampling=sampling, **kwargs),
                                        timeout=timeout)


def test_round_trip(stack):
    resp = gen(stack, num_candidates=3, user_id="alice")
    assert resp.model_version == "v0001"
    assert resp.prompt_tokens > 0
    assert len(resp.candidates) == 3
    assert len({c.response_id for c in resp.candidates}) == 3
    for i, c in enumerate(resp.candidates):
        assert c.index == i
        assert c.response_id
        assert c.finish_reason in (policy_pb2.FINISH_REASON_EOS, policy_pb2.FINISH_REASON_LENGTH,
                                   policy_pb2.FINISH_REASON_STOP)
        assert 0 < c.num_tokens <= 12 or c.finish_reason == policy_pb2.FINISH_REASON_EOS
    assert any(c.text for c in resp.candidates)
    # each candidate is recorded in Redis under its response_id, as the client saw it
    keys = Keys(stack.settings.key_prefix)
    for c in resp.candidates:
        rec = records_pb2.GenerationRecord.FromString(stack.redis.get(keys.generation(c.response_id)))
        assert (rec.prompt, rec.response, rec.num_tokens, rec.model_version, rec.user_id) == (
            PROMPT, c.text, c.num_tokens, "v0001", "alice")
    assert stack.redis.lindex(keys.recent_prompts, 0).decode() == PROMPT


@pytest.mark.parametrize("n", [1, 2, 8])
def test_num_candidates(stack, n):
    resp = gen(stack, num_candidates=n, sampling=policy_pb2.SamplingParams(max_new_tokens=4))
    assert len(resp.candidates) == n
    assert [c.index for c in resp.candidates] == list(range(n))


def test_zero_candidates_means_one(stack):
    assert len(gen(stack, num_candidates=0).candidates) == 1


def test_seeded_sampling_is_reproducible(stack):
    sp = policy_pb2.SamplingParams(max_new_tokens=16, temperature=1.0, seed=1234)
    a = gen(stack, sampling=sp, num_candidates=2)
    b = gen(stack, sampling=sp, num_candidates=2)
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    assert [c.num_tokens for c in a.candidates] == [c.num_tokens for c in b.candidates]
    # distinct response ids each time: a retried request is a new generation
    assert not {c.response_id for c in a.candidates} & {c.response_id for c in b.candidates}
    # seeds differ per candidate (seed + i); over a few seeds at least one pair differs
    texts = set()
    for seed in range(5):
        r = gen(stack, sampling=policy_pb2.SamplingParams(max_new_tokens=16, temperature=1.5, seed=seed))
        texts.add(r.candidates[0].text)
    assert len(texts) > 1


def test_greedy_is_deterministic(stack):
    sp = policy_pb2.SamplingParams(max_new_tokens=16, temperature=0.0)
    texts = {c.text for _ in range(2) for c in gen(stack, sampling=sp, num_candidates=2).candidates}
    assert len(texts) == 1


def test_max_new_tokens_bounds_length(stack):
    resp = gen(stack, sampling=policy_pb2.SamplingParams(max_new_tokens=3, temperature=0.0), num_candidates=4)
    for c in resp.candidates:
        assert c.num_tokens <= 3
    # greedy decoding of a fixed prompt: find a prompt whose greedy answer runs past 3 tokens
    long_one = gen(stack, sampling=policy_pb2.SamplingParams(max_new_tokens=40, temperature=0.0))
    if long_one.candidates[0].num_tokens > 3:
        assert all(c.finish_reason == policy_pb2.FINISH_REASON_LENGTH and c.num_tokens == 3
                   for c in resp.candidates)
    # with a high temperature the tiny model rarely ends within 2 tokens
    hot = gen(stack, sampling=policy_pb2.SamplingParams(max_new_tokens=2, temperature=2.0, seed=7), num_candidates=8)
    assert any(c.finish_reason == policy_pb2.FINISH_REASON_LENGTH and c.num_tokens == 2 for c in hot.candidates)
    assert all(c.num_tokens <= 2 for c in hot.candidates)


def test_stop_string_cuts_text(stack):
    greedy = policy_pb2.SamplingParams(max_new_tokens=40, temperature=0.0)
    full = gen(stack, sampling=greedy).candidates[0].text
    assert len(full) >= 4, f"greedy text too short to cut: {full!r}"
    # stop at the first occurrence of a 2-char substring taken from the middle of the text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut_at = full.find(stop)
    sp = policy_pb2.SamplingParams(max_new_tokens=40, temperature=0.0, stop=[stop, "\u2603never\u2603"])
    c = gen(stack, sampling=sp).candidates[0]
    assert c.finish_reason == policy_pb2.FINISH_REASON_STOP
    assert c.text == full[:cut_at]
    assert stop not in c.text


def test_stream_deltas_concatenate_to_final_text(stack):
    sp = policy_pb2.SamplingParams(max_new_tokens=16, temperature=1.0, seed=99)
    req = policy_pb2.GenerateRequest(prompt=PROMPT, sampling=sp, num_candidates=3, user_id="bob")
    chunks = list(stack.server.policy.GenerateStream(req, timeout=60))
    texts: dict[int, str] = {}
    finals: dict[int, policy_pb2.GenerateChunk] = {}
    ids: dict[int, str] = {}
    for ch in chunks:
        assert ch.model_version == "v0001"
        assert ids.setdefault(ch.index, ch.response_id) == ch.response_id
        assert ch.index not in finals, "no chunk may follow a candidate's final chunk"
        if ch.finish_reason:
            finals[ch.index] = ch
        else:
            texts[ch.index] = texts.get(ch.index, "") + ch.text_delta
    assert sorted(finals) == [0, 1, 2]
    assert len(set(ids.values())) == 3
    # the stream produces the same text as Generate with the same seed
    unary = gen(stack, sampling=sp, num_candidates=3)
    for c in unary.candidates:
        assert texts.get(c.index, "") == c.text
        assert finals[c.index].num_tokens == c.num_tokens
        assert finals[c.index].finish_reason == c.finish_reason
    # the stream's response ids take feedback
    ack = stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        comparison=policy_pb2.Comparison(chosen_response_id=ids[0], rejected_response_id=ids[1]), user_id="bob"))
    assert ack.feedback_id and not ack.duplicate
    ack = stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        rating=policy_pb2.Rating(response_id=ids[2], thumbs_up=True), user_id="bob"))
    assert ack.feedback_id


def test_stream_with_stop_string(stack):
    greedy = policy_pb2.SamplingParams(max_new_tokens=40, temperature=0.0)
    full = gen(stack, sampling=greedy).candidates[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    sp = policy_pb2.SamplingParams(max_new_tokens=40, temperature=0.0, stop=[stop])
    chunks = list(stack.server.policy.GenerateStream(policy_pb2.GenerateRequest(prompt=PROMPT, sampling=sp), timeout=60))
    text = "".join(ch.text_delta for ch in chunks)
    assert text == full[:full.find(stop)]
    assert chunks[-1].finish_reason == policy_pb2.FINISH_REASON_STOP


def test_pinned_model_version(stack):
    v2 = publish_model(stack.registry, stack.model_dir, parent="v0001", description="pinned")
    assert v2 == "v0002"
    resp = gen(stack, model_version="v0002", num_candidates=2)
    assert resp.model_version == "v0002"
    # its candidates are recorded with the pinned version and take feedback
    ack = stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        rating=policy_pb2.Rating(response_id=resp.candidates[0].response_id, thumbs_up=False),
        feedback_token=resp.candidates[0].feedback_token))
    assert ack.feedback_id
    chunks = list(stack.server.policy.GenerateStream(policy_pb2.GenerateRequest(
        prompt=PROMPT, model_version="v0002", sampling=policy_pb2.SamplingParams(max_new_tokens=4)), timeout=60))
    assert {c.model_version for c in chunks} == {"v0002"}
    # current requests still get v0001; GetModel tells them apart
    assert gen(stack).model_version == "v0001"
    info = stack.server.policy.GetModel(policy_pb2.GetModelRequest(), timeout=10)
    assert info.model_version == "v0001" and info.current
    info2 = stack.server.policy.GetModel(policy_pb2.GetModelRequest(model_version="v0002"), timeout=10)
    assert info2.model_version == "v0002" and not info2.current and info2.parent_version == "v0001"
    assert info2.training.description == "pinned"
    with pytest.raises(grpc.RpcError) as err:
        gen(stack, model_version="v0099")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "v0099" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stack.server.policy.GenerateStream(policy_pb2.GenerateRequest(prompt=PROMPT, model_version="v0099"),
                                                timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stack.server.policy.GetModel(policy_pb2.GetModelRequest(model_version="v0099"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_deadline_exceeded_then_still_serving(stack):
    sp = policy_pb2.SamplingParams(max_new_tokens=500, temperature=1.0, stop=["\u2603\u2603"])
    with pytest.raises(grpc.RpcError) as err:
        gen(stack, sampling=sp, num_candidates=8, timeout=0.02)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    started = time.monotonic()
    resp = gen(stack, sampling=policy_pb2.SamplingParams(max_new_tokens=4), timeout=20)
    assert resp.candidates
    assert time.monotonic() - started < 10
    counted = lambda: metric_value(stack.server.metrics_text(), "grpc_server_handled_total",
                                   grpc_method="Generate", grpc_code="DEADLINE_EXCEEDED")
    end = time.monotonic() + 10
    while counted() < 1 and time.monotonic() < end:
        time.sleep(0.1)
    assert counted() >= 1  # operators see expired calls as DEADLINE_EXCEEDED, not CANCELLED


def test_deadline_exceeded_stream(stack):
    sp = policy_pb2.SamplingParams(max_new_tokens=500, temperature=1.0, stop=["\u2603\u2603"])
    with pytest.raises(grpc.RpcError) as err:
        list(stack.server.policy.GenerateStream(policy_pb2.GenerateRequest(prompt=PROMPT, sampling=sp,
                                                                           num_candidates=8), timeout=0.02))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gen(stack, sampling=policy_pb2.SamplingParams(max_new_tokens=4), timeout=20).candidates


def test_queue_full_answers_resource_exhausted(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-queue"), tiny_model_dir,
                     max_queue=1, max_batch_size=1, batch_wait_ms=0.0, metrics_port=-1)
    try:
        results: list = []
        lock = threading.Lock()
        barrier = threading.Barrier(12)
        req = policy_pb2.GenerateRequest(prompt=PROMPT, sampling=policy_pb2.SamplingParams(
            max_new_tokens=64, temperature=1.0, stop=["\u2603\u2603"]))

        def call():
            barrier.wait(10)
            try:
                s.server.policy.Generate(req, timeout=60)
                outcome = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                outcome = exc.code()
                if outcome == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "queue" in exc.details()
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=call) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "a call hung"
        assert len(results) == 12
        assert set(results) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
        assert results.count(grpc.StatusCode.OK) >= 2
        # once the burst is over the server takes work again
        assert s.server.policy.Generate(req, timeout=60).candidates
    finally:
        s.close()


def test_graceful_shutdown_finishes_in_flight(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-shutdown"), tiny_model_dir, metrics_port=-1)
    try:
        channel = grpc.insecure_channel(s.server.target)  # its own channel: stop() closes the helper's
        from rlhf.v1 import policy_pb2_grpc
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        stub.Generate(policy_pb2.GenerateRequest(prompt=PROMPT, sampling=policy_pb2.SamplingParams(max_new_tokens=2)),
                      timeout=30)  # warm
        req = policy_pb2.GenerateRequest(prompt=PROMPT, num_candidates=4, sampling=policy_pb2.SamplingParams(
            max_new_tokens=40, temperature=1.0, stop=["\u2603\u2603"]))
        started = {"grpc_service": "rlhf.v1.PolicyService", "grpc_method": "Generate", "grpc_type": "unary"}
        before = s.server.server.metrics.registry.get_sample_value("grpc_server_started_total", started)
        future = stub.Generate.future(req, timeout=60)
        deadline = time.monotonic() + 10
        while s.server.server.metrics.registry.get_sample_value("grpc_server_started_total", started) == before:
            assert time.monotonic() < deadline
            time.sleep(0.001)  # stop as soon as the call reached the server (queued, batching or decoding)
        s.server.stop(grace=30)
        s.server = None
        resp = future.result(timeout=60)
        assert len(resp.candidates) == 4 and resp.model_version == "v0001"
        channel.close()
    finally:
        s.close()


def burst(stack, requests, timeout=120):
    """Sends every request at once (threads behind a barrier); returns responses or grpc errors, in order."""
    out: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(i):
        barrier.wait(10)
        try:
            out[i] = stack.server.policy.Generate(requests[i], timeout=timeout)
        except grpc.RpcError as exc:
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return out


def test_tiny_temperature_fails_no_call_in_its_batch(stack):
    """Issue 12.1: temperature=1e-40 used to overflow and fail every call batched with it."""
    tiny = policy_pb2.SamplingParams(max_new_tokens=12, temperature=1e-40)
    normal = policy_pb2.SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50)
    reqs = [policy_pb2.GenerateRequest(prompt=PROMPT, sampling=tiny if i % 4 == 0 else normal, num_candidates=2)
            for i in range(12)]
    out = burst(stack, reqs)
    assert [type(r).__name__ for r in out] == ["GenerateResponse"] * 12
    greedy = gen(stack, sampling=policy_pb2.SamplingParams(max_new_tokens=12, temperature=0.0)).candidates[0].text
    assert all(c.text == greedy for c in out[0].candidates)  # below the floor, temperature means greedy


def test_seeded_text_does_not_depend_on_the_batch(stack):
    sp = policy_pb2.SamplingParams(max_new_tokens=20, temperature=1.0, seed=4242)
    alone = gen(stack, sampling=sp).candidates[0].text
    noise = [policy_pb2.GenerateRequest(prompt=f"Question {i}: where is my parcel?", num_candidates=2,
                                        sampling=policy_pb2.SamplingParams(max_new_tokens=8 + 4 * i, temperature=1.2))
             for i in range(7)]
    out = burst(stack, noise[:3] + [policy_pb2.GenerateRequest(prompt=PROMPT, sampling=sp)] + noise[3:])
    assert out[3].candidates[0].text == alone
    assert all(isinstance(r, policy_pb2.GenerateResponse) for r in out)
