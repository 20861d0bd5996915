"""Fuzzing every RPC of a real server: only documented status codes, nothing internal in messages."""

from __future__ import annotations

import grpc
import pytest

from rlhf.v1 import policy_pb2
from benchmarks import fuzzing as fuzz


def real_ids(server) -> list[str]:
    resp = server.policy.Generate(policy_pb2.GenerateRequest(
        prompt="hello", num_candidates=2, sampling=policy_pb2.SamplingParams(max_new_tokens=4, seed=1),
        user_id="after-fuzz"))  # rated below by the user it was served to
    return [c.response_id for c in resp.candidates]


def test_fuzzed_requests_get_documented_codes_and_the_server_keeps_serving(server, settings):
    ids = real_ids(server)
    outcome = fuzz.run(server.channel, cases=500, seed=12, ids=ids, registry_root=str(settings.registry))
    assert outcome.bad == [], outcome.bad[:10]
    assert outcome.codes["INVALID_ARGUMENT"] > 50 and outcome.codes["OK"] > 20, outcome.codes
    ack = server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
        rating=policy_pb2.Rating(response_id=real_ids(server)[0], thumbs_up=True), user_id="after-fuzz"))
    assert ack.feedback_id


@pytest.mark.parametrize("raw", [b"\x0a\x02\xff\xfe", b"\xff\xff\xff", b"\x0a\x05ab"])
def test_undecodable_requests_are_invalid_argument_without_internals(server, raw):
    for path in ("/rlhf.v1.PolicyService/Generate", "/rlhf.v1.PolicyService/SubmitFeedback"):
        code, details = fuzz.call(server.channel, path, False, raw)
        assert code == "INVALID_ARGUMENT" and "DecodeError" not in details and "valid" in details
    code, details = fuzz.call(server.channel, "/rlhf.v1.PolicyService/GenerateStream", True, raw)
    assert code == "INVALID_ARGUMENT"


def test_a_huge_id_is_refused_by_its_length_and_never_echoed(server):
    huge = "r" * 1_000_000
    with pytest.raises(grpc.RpcError) as err:
        server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id=huge)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rating.response_id is 1000000 characters; the limit is 64" in err.value.details()
    assert len(err.value.details()) < 200
    with pytest.raises(grpc.RpcError) as err:
        server.policy.GetModel(policy_pb2.GetModelRequest(model_version="v" * 10_000))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.value.details()) < 200


def test_an_unexpected_failure_is_internal_with_a_logged_ref_and_no_details(server, monkeypatch, caplog):
    def broken(version):
        raise RuntimeError(f"secret detail {server.settings.registry}/versions/{version}")
    monkeypatch.setattr(server.server.registry, "manifest", broken)
    with caplog.at_level("ERROR", logger="rlhf_serve.server"):
        with pytest.raises(grpc.RpcError) as err:
            server.policy.GetModel(policy_pb2.GetModelRequest())
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details()
    assert "secret" not in details and "RuntimeError" not in details and "ref " in details
    ref = details.split("ref ")[1][:12]
    assert any(ref in rec.getMessage() and rec.exc_info for rec in caplog.records)
