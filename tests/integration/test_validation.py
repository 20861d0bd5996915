"""Bad GenerateRequests get INVALID_ARGUMENT with a message that says what to fix; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from rlhf.v1 import policy_pb2
from tests.helpers import ServingStack

SP = policy_pb2.SamplingParams


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-validation"), tiny_model_dir, metrics_port=-1,
                     max_prompt_chars=2000, max_new_tokens_limit=100)
    yield s
    s.close()


CASES = [
    ("empty prompt", dict(prompt=""), ["prompt", "empty"]),
    ("whitespace prompt", dict(prompt="  \n\t "), ["prompt", "empty"]),
    ("prompt over the char limit", dict(prompt="a" * 2001), ["2001", "2000"]),
    ("prompt over the model context", dict(prompt="the quick brown fox jumps over " * 40), ["tokens", "context"]),
    ("negative temperature", dict(sampling=SP(temperature=-0.5)), ["temperature"]),
    ("nan temperature", dict(sampling=SP(temperature=float("nan"))), ["temperature"]),
    ("top_p zero", dict(sampling=SP(top_p=0.0)), ["top_p"]),
    ("top_p above one", dict(sampling=SP(top_p=1.5)), ["top_p"]),
    ("nine candidates", dict(num_candidates=9), ["num_candidates", "8", "9"]),
    ("max_new_tokens over the limit", dict(sampling=SP(max_new_tokens=101)), ["max_new_tokens", "100"]),
    ("too many stop strings", dict(sampling=SP(stop=[f"s{i}" for i in range(9)])), ["stop", "8"]),
    ("empty stop string", dict(sampling=SP(stop=[""])), ["stop"]),
    ("over-long stop string", dict(sampling=SP(stop=["x" * 65])), ["stop", "64"]),
    ("over-long user_id", dict(user_id="u" * 300), ["user_id"]),
]


@pytest.mark.parametrize("name,fields,words", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_invalid_request(stack, name, fields, words, rpc):
    values = dict(prompt="Hello there.")
    values.update(fields)
    req = policy_pb2.GenerateRequest(**values)
    with pytest.raises(grpc.RpcError) as err:
        if rpc == "Generate":
            stack.server.policy.Generate(req, timeout=20)
        else:
            list(stack.server.policy.GenerateStream(req, timeout=20))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    for w in words:
        assert w in err.value.details(), err.value.details()
    # the server still serves
    ok = stack.server.policy.Generate(policy_pb2.GenerateRequest(prompt="Hello there.", sampling=SP(max_new_tokens=2)),
                                      timeout=20)
    assert ok.candidates


def test_edges_are_accepted(stack):
    for fields in (dict(num_candidates=8), dict(sampling=SP(top_p=1.0, temperature=0.0, max_new_tokens=100)),
                   dict(sampling=SP(stop=[f"s{i}" for i in range(8)], max_new_tokens=2)),
                   dict(sampling=SP(top_k=5, top_p=0.5, max_new_tokens=2))):
        values = dict(prompt="Hello there.", sampling=SP(max_new_tokens=2))
        values.update(fields)
        assert stack.server.policy.Generate(policy_pb2.GenerateRequest(**values), timeout=30).candidates
