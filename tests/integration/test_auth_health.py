"""Bearer-token auth, the standard health service and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rlhf.v1 import admin_pb2, policy_pb2
from tests.helpers import ServingStack, metric_value

GOOD = [("authorization", "Bearer secret")]
ADMIN = [("authorization", "Bearer root-token")]


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-auth"), tiny_model_dir, api_tokens="secret, other",
                     admin_token="root-token")
    yield s
    s.close()


def gen_req():
    return policy_pb2.GenerateRequest(prompt="Auth?", sampling=policy_pb2.SamplingParams(max_new_tokens=3))


@pytest.mark.parametrize("metadata", [None, [("authorization", "Bearer wrong")], [("authorization", "secret")],
                                      [("authorization", "Basic secret")], ADMIN])
def test_policy_rejects_without_valid_token(stack, metadata):
    pol = stack.server.policy
    for call in (lambda: pol.Generate(gen_req(), metadata=metadata, timeout=10),
                 lambda: list(pol.GenerateStream(gen_req(), metadata=metadata, timeout=10)),
                 lambda: pol.GetModel(policy_pb2.GetModelRequest(), metadata=metadata, timeout=10),
                 lambda: pol.SubmitFeedback(policy_pb2.FeedbackRequest(), metadata=metadata, timeout=10)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in err.value.details()


def test_policy_accepts_valid_tokens(stack):
    pol = stack.server.policy
    resp = pol.Generate(gen_req(), metadata=GOOD, timeout=30)
    assert resp.model_version == "v0001"
    assert pol.Generate(gen_req(), metadata=[("authorization", "bearer other")], timeout=30).candidates
    chunks = list(pol.GenerateStream(gen_req(), metadata=GOOD, timeout=30))
    assert chunks[-1].finish_reason
    ack = pol.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(
        response_id=resp.candidates[0].response_id, thumbs_up=True),
        feedback_token=resp.candidates[0].feedback_token), metadata=GOOD, timeout=10)
    assert ack.feedback_id
    assert pol.GetModel(policy_pb2.GetModelRequest(), metadata=GOOD, timeout=10).model_version == "v0001"
    text = stack.server.metrics_text()
    assert metric_value(text, "grpc_server_handled_total", grpc_method="Generate", grpc_code="UNAUTHENTICATED") >= 1


def test_admin_token_guards_admin_service(stack):
    admin = stack.server.admin
    for metadata in (None, GOOD, [("authorization", "Bearer nope")]):
        with pytest.raises(grpc.RpcError) as err:
            admin.ListModels(admin_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    models = admin.ListModels(admin_pb2.ListModelsRequest(), metadata=ADMIN, timeout=10).models
    assert [m.model_version for m in models] == ["v0001"]


def test_health_without_token(stack):
    stub = health_pb2_grpc.HealthStub(stack.server.channel)
    for service in ("", "rlhf.v1.PolicyService", "rlhf.v1.AdminService"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services(stack):
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.server.channel)
    responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"rlhf.v1.PolicyService", "rlhf.v1.AdminService", "grpc.health.v1.Health"} <= names
    # descriptors can be fetched by symbol (what grpcurl does)
    responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="rlhf.v1.PolicyService")]), timeout=10))
    assert responses[0].file_descriptor_response.file_descriptor_proto


def test_open_server_needs_no_token(server):
    """The conftest `server` (no tokens configured) is open, and its health says SERVING."""
    resp = server.policy.Generate(gen_req(), timeout=30)
    assert resp.model_version == "v0001"
    assert server.admin.ListModels(admin_pb2.ListModelsRequest(), timeout=10).models
    stub = health_pb2_grpc.HealthStub(server.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
