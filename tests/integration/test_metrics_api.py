"""The Prometheus /metrics endpoint as an operator sees it while clients call the API."""

from __future__ import annotations

import threading

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlhf.v1 import policy_pb2
from tests.helpers import ServingStack, metric_samples, metric_value

H = dict(grpc_service="rlhf.v1.PolicyService", grpc_type="unary")


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-metrics"), tiny_model_dir, batch_wait_ms=50.0)
    yield s
    s.close()


def gen(stack, n=1, max_new=6, prompt="Metrics please.", **kw):
    return stack.server.policy.Generate(policy_pb2.GenerateRequest(
        prompt=prompt, num_candidates=n, sampling=policy_pb2.SamplingParams(max_new_tokens=max_new), **kw),
        timeout=60)


def test_endpoint_parses_and_names_the_model(stack):
    text = stack.server.metrics_text()
    families = {f.name for f in text_string_to_metric_families(text)}
    for name in ("grpc_server_handled", "grpc_server_started", "grpc_server_handling_seconds", "rlhf_batch_size",
                 "rlhf_time_to_first_token_seconds", "rlhf_model_info", "rlhf_feedback", "rlhf_queue_depth"):
        assert name in families, name
    assert metric_value(text, "rlhf_model_info", model_version="v0001") == 1


def test_handled_counts_ok_and_invalid_argument(stack):
    before = stack.server.metrics_text()
    for _ in range(3):
        gen(stack)
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            gen(stack, n=9)
    after = stack.server.metrics_text()
    d = lambda **lab: metric_value(after, "grpc_server_handled_total", **H, **lab) - metric_value(
        before, "grpc_server_handled_total", **H, **lab)
    assert d(grpc_method="Generate", grpc_code="OK") == 3
    assert d(grpc_method="Generate", grpc_code="INVALID_ARGUMENT") == 2
    started = metric_value(after, "grpc_server_started_total", grpc_method="Generate") - metric_value(
        before, "grpc_server_started_total", grpc_method="Generate")
    assert started == 5
    assert metric_value(after, "grpc_server_handling_seconds_count", grpc_method="Generate", grpc_code="OK") >= 3


def test_stream_metrics(stack):
    before = stack.server.metrics_text()
    chunks = list(stack.server.policy.GenerateStream(policy_pb2.GenerateRequest(
        prompt="Stream it.", sampling=policy_pb2.SamplingParams(max_new_tokens=4)), timeout=60))
    after = stack.server.metrics_text()
    lab = dict(grpc_service="rlhf.v1.PolicyService", grpc_method="GenerateStream", grpc_type="server_stream")
    assert metric_value(after, "grpc_server_handled_total", grpc_code="OK", **lab) - metric_value(
        before, "grpc_server_handled_total", grpc_code="OK", **lab) == 1
    assert metric_value(after, "grpc_server_msg_sent_total", **lab) - metric_value(
        before, "grpc_server_msg_sent_total", **lab) == len(chunks)


def test_token_counters_and_ttft(stack):
    before = stack.server.metrics_text()
    resp = gen(stack, n=3, max_new=5, prompt="Counters, please.")  # a prompt no other test sends
    after = stack.server.metrics_text()
    v = dict(model_version="v0001")
    delta = lambda name: metric_value(after, name, **v) - metric_value(before, name, **v)
    assert delta("rlhf_generation_tokens_total") == sum(c.num_tokens for c in resp.candidates)
    assert delta("rlhf_prompt_tokens_total") == 3 * resp.prompt_tokens
    assert delta("rlhf_prefill_tokens_total") == resp.prompt_tokens  # the 3 candidates share one prefill
    assert delta("rlhf_time_to_first_token_seconds_count") == 1  # one per request
    assert delta("rlhf_e2e_request_latency_seconds_count") == 1
    assert delta("rlhf_request_success_total") == 3
    assert delta("rlhf_prompt_cache_query_tokens_total") == resp.prompt_tokens
    assert delta("rlhf_prompt_cache_hit_tokens_total") == 0
    # asked again: the prompt cache has it (RLHF_PROMPT_CACHE_MB), so no prompt token runs
    before = after
    again = gen(stack, n=2, max_new=5, prompt="Counters, please.")
    after = stack.server.metrics_text()
    assert delta("rlhf_prompt_tokens_total") == 2 * again.prompt_tokens
    assert delta("rlhf_prefill_tokens_total") == 0
    assert delta("rlhf_prompt_cache_query_tokens_total") == again.prompt_tokens
    assert delta("rlhf_prompt_cache_hit_tokens_total") == again.prompt_tokens
    assert metric_value(after, "rlhf_prompt_cache_bytes") > 0


def test_concurrent_calls_are_batched(stack):
    before = stack.server.metrics_text()
    errors = []
    barrier = threading.Barrier(8)

    def call():
        barrier.wait(10)
        try:
            gen(stack, max_new=4)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    after = stack.server.metrics_text()
    # rlhf_batch_size is observed once per decoding step (continuous batching) with the rows in it;
    # steps of size <= 1 are in bucket le=1. One at a time, 8 calls of 4 tokens would take 8 x 4 steps.
    batches = metric_value(after, "rlhf_batch_size_count") - metric_value(before, "rlhf_batch_size_count")
    total = metric_value(after, "rlhf_batch_size_sum") - metric_value(before, "rlhf_batch_size_sum")
    singles = metric_value(after, "rlhf_batch_size_bucket", le="1.0") - metric_value(
        before, "rlhf_batch_size_bucket", le="1.0")
    assert 0 < total <= 8 * 4  # row-steps: each candidate decodes at most max_new_tokens steps
    assert batches < 8 * 4
    assert singles < batches or batches == 1
    assert metric_value(after, "rlhf_queue_depth") == 0


def test_feedback_counter(stack):
    resp = gen(stack, n=2, user_id="m")
    a, b = resp.candidates
    pol = stack.server.policy
    pol.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id=a.response_id, thumbs_up=True),
                                                  idempotency_key="m1", user_id="m"))
    pol.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id=a.response_id, thumbs_up=True),
                                                  idempotency_key="m1", user_id="m"))  # duplicate: not counted as feedback
    pol.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id=b.response_id,
                                                                           thumbs_up=False), user_id="m"))
    pol.SubmitFeedback(policy_pb2.FeedbackRequest(comparison=policy_pb2.Comparison(
        chosen_response_id=a.response_id, rejected_response_id=b.response_id), user_id="m"))
    with pytest.raises(grpc.RpcError):
        pol.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id="nope", thumbs_up=True)))
    text = stack.server.metrics_text()
    assert metric_value(text, "rlhf_feedback_total", kind="thumbs_up", model_version="v0001") == 1
    assert metric_value(text, "rlhf_feedback_total", kind="thumbs_down", model_version="v0001") == 1
    assert metric_value(text, "rlhf_feedback_total", kind="comparison", model_version="v0001") == 1
    assert metric_value(text, "rlhf_feedback_duplicates_total") == 1
    assert metric_value(text, "grpc_server_handled_total", grpc_method="SubmitFeedback", grpc_code="NOT_FOUND") == 1
    assert metric_value(text, "grpc_server_handled_total", grpc_method="SubmitFeedback", grpc_code="OK") == 4
    assert all(s.value >= 0 for s in metric_samples(text))
