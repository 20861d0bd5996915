"""Hot swap: moving the current-version pointer while clients call; refusing corrupt versions; admin RPCs."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from registry.pointer import events_channel
from rlhf.v1 import admin_pb2, policy_pb2
from rlhf_core.keys import Keys
from tests.helpers import ServingStack, metric_value, point_at, publish_model


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-swap"), tiny_model_dir)
    yield s
    s.close()


def gen(stack, **kw):
    return stack.server.policy.Generate(policy_pb2.GenerateRequest(
        prompt="Swap test.", sampling=policy_pb2.SamplingParams(max_new_tokens=6), **kw), timeout=60)


def wait_for(predicate, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_1_swap_under_load(stack):
    assert gen(stack).model_version == "v0001"
    v2 = publish_model(stack.registry, stack.model_dir, parent="v0001", description="round 1")
    stop = threading.Event()
    seen, errors = [], []

    def hammer():
        while not stop.is_set():
            try:
                seen.append(gen(stack).model_version)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        point_at(stack.settings, v2)
        assert wait_for(lambda: stack.server.policy.GetModel(policy_pb2.GetModelRequest()).model_version == "v0002")
        assert wait_for(lambda: seen and seen[-1] == "v0002")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert "v0001" in seen and "v0002" in seen
    first_v2 = seen.index("v0002")
    assert set(seen[first_v2 + 3:]) <= {"v0002"}  # after the swap (allowing in-flight calls) only v0002
    info = stack.server.policy.GetModel(policy_pb2.GetModelRequest())
    assert info.model_version == "v0002" and info.current and info.parent_version == "v0001"
    assert gen(stack).model_version == "v0002"
    text = stack.server.metrics_text()
    assert metric_value(text, "rlhf_model_swaps_total") == 1
    assert metric_value(text, "rlhf_model_info", model_version="v0002") == 1
    assert metric_value(text, "rlhf_model_info", model_version="v0001") == 0
    assert metric_value(text, "rlhf_model_swap_duration_seconds_count") == 1


def test_2_corrupt_version_is_refused(stack):
    v3 = publish_model(stack.registry, stack.model_dir, parent="v0002", description="corrupt")
    assert v3 == "v0003"
    weights = next(stack.registry.path(v3).glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    # the admin API refuses to point at it
    with pytest.raises(grpc.RpcError) as err:
        stack.server.admin.Promote(admin_pb2.PromoteRequest(model_version=v3), timeout=20)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # something moves the pointer anyway (e.g. a hand edit): the server refuses to load it
    keys = Keys(stack.settings.key_prefix)
    stack.redis.set(keys.current_version, v3)
    stack.redis.publish(events_channel(stack.redis, keys), v3)
    assert wait_for(lambda: metric_value(stack.server.metrics_text(), "rlhf_model_swap_failures_total") == 1)
    time.sleep(2.5)  # one poll interval: the refusal is not retried over and over
    text = stack.server.metrics_text()
    assert metric_value(text, "rlhf_model_swap_failures_total") == 1
    assert metric_value(text, "rlhf_model_swaps_total") == 1
    assert metric_value(text, "rlhf_model_info", model_version="v0002") == 1
    assert gen(stack).model_version == "v0002"
    assert stack.server.policy.GetModel(policy_pb2.GetModelRequest()).model_version == "v0002"
    # pinning it is refused too, and the server keeps serving
    with pytest.raises(grpc.RpcError) as err:
        gen(stack, model_version=v3)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert gen(stack).model_version == "v0002"
    stack.redis.set(keys.current_version, "v0002")


def test_3_admin_list_promote_rollback(stack):
    admin = stack.server.admin
    models = admin.ListModels(admin_pb2.ListModelsRequest(), timeout=20).models
    assert [m.model_version for m in models] == ["v0001", "v0002", "v0003"]
    assert [m.current for m in models] == [False, True, False]
    assert models[1].parent_version == "v0001" and models[1].training.description == "round 1"
    info = admin.Rollback(admin_pb2.RollbackRequest(), timeout=20)  # to the parent of v0002
    assert info.model_version == "v0001" and info.current
    assert wait_for(lambda: gen(stack).model_version == "v0001")
    info = admin.Promote(admin_pb2.PromoteRequest(model_version="v0002"), timeout=20)
    assert info.model_version == "v0002" and info.current
    assert wait_for(lambda: stack.server.policy.GetModel(policy_pb2.GetModelRequest()).model_version == "v0002")
    info = admin.Rollback(admin_pb2.RollbackRequest(model_version="v0001"), timeout=20)
    assert info.model_version == "v0001"
    assert wait_for(lambda: gen(stack).model_version == "v0001")
    models = admin.ListModels(admin_pb2.ListModelsRequest(), timeout=20).models
    assert [m.current for m in models] == [True, False, False]
    with pytest.raises(grpc.RpcError) as err:
        admin.Rollback(admin_pb2.RollbackRequest(), timeout=20)  # v0001 has no parent
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        admin.Promote(admin_pb2.PromoteRequest(model_version="v0077"), timeout=20)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    history = stack.redis.lrange(Keys(stack.settings.key_prefix).model_history, 0, -1)
    assert len(history) >= 4
    assert metric_value(stack.server.metrics_text(), "rlhf_model_swaps_total") == 4
