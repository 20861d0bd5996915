"""Version names from clients never reach the disk: the registry and the API accept only names
the registry issues (v + digits). Malformed -> INVALID_ARGUMENT, unknown -> NOT_FOUND."""

from __future__ import annotations

import grpc
import pytest

from registry import InvalidVersionName, Registry, VersionNotFound, is_version_name
from rlhf.v1 import admin_pb2, policy_pb2
from tests.helpers import ServingStack, metric_value, publish_model

HOSTILE = ["../../other/versions/v0001", "/etc/passwd", "v0001/", "./v0001", "v0001/.", "v0001/../v0001",
           "V0001", "v1", "v0001 ", " v0001", "v0001\x00", "v٠٠٠١", "v" + "1" * 9_999, "x" * 10_000]


@pytest.mark.parametrize("name", HOSTILE)
def test_registry_refuses_malformed_names_before_touching_the_disk(tmp_path, tiny_model_dir, name):
    reg = Registry(tmp_path / "reg")
    publish_model(reg, tiny_model_dir)
    outside = tmp_path / "other" / "versions" / "v0001"  # a real model outside the registry
    outside.parent.mkdir(parents=True)
    (reg.versions_dir / "v0001").rename(outside)
    reg = Registry(tmp_path / "reg")
    assert not is_version_name(name)
    assert not reg.exists(name)
    for call in (reg.path, reg.manifest, reg.verify):
        with pytest.raises(InvalidVersionName) as err:
            call(name)
        assert str(tmp_path) not in str(err.value) and len(str(err.value)) < 200


def test_registry_names(tmp_path, tiny_model_dir):
    reg = Registry(tmp_path / "reg")
    v1 = publish_model(reg, tiny_model_dir)
    assert is_version_name(v1) and reg.exists(v1) and reg.path(v1).name == v1
    with pytest.raises(VersionNotFound):
        reg.path("v0002")
    (reg.versions_dir / "v0001.bak").mkdir()  # a stray directory is not a version
    (reg.versions_dir / "v0001.bak" / "manifest.json").write_text("{}")
    assert reg.list_versions() == ["v0001"]


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reg-names")
    s = ServingStack(redis_url, root / "registry", tiny_model_dir)
    # a complete model outside the registry that path tricks would reach
    outside = Registry(root / "other")
    publish_model(outside, tiny_model_dir)
    publish_model(outside, tiny_model_dir)
    s.outside = outside
    yield s
    s.close()


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("name", HOSTILE + ["{abs_outside}", "../../other/versions/v0002"])
def test_api_refuses_malformed_names(stack, name):
    name = name.replace("{abs_outside}", str(stack.outside.path("v0002")))
    srv = stack.server
    calls = {
        "GetModel": lambda: srv.policy.GetModel(policy_pb2.GetModelRequest(model_version=name), timeout=20),
        "Generate": lambda: srv.policy.Generate(policy_pb2.GenerateRequest(
            prompt="hi", model_version=name, sampling=policy_pb2.SamplingParams(max_new_tokens=2)), timeout=20),
        "Promote": lambda: srv.admin.Promote(admin_pb2.PromoteRequest(model_version=name), timeout=20),
        "Rollback": lambda: srv.admin.Rollback(admin_pb2.RollbackRequest(model_version=name), timeout=20),
    }
    for method, call in calls.items():
        code, details = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details[:200])
        assert "v0001" in details and len(details) < 300  # says what a name looks like, echoes little
        assert str(stack.settings.registry) not in details and str(stack.outside.root) not in details


def test_api_unknown_names_are_not_found_and_nothing_was_loaded(stack):
    srv = stack.server
    for call in (lambda: srv.policy.GetModel(policy_pb2.GetModelRequest(model_version="v0042"), timeout=20),
                 lambda: srv.policy.Generate(policy_pb2.GenerateRequest(prompt="hi", model_version="v0042"),
                                             timeout=20),
                 lambda: srv.admin.Promote(admin_pb2.PromoteRequest(model_version="v0042"), timeout=20),
                 lambda: srv.admin.Rollback(admin_pb2.RollbackRequest(model_version="v0042"), timeout=20)):
        code, details = _code(call)
        assert code == grpc.StatusCode.NOT_FOUND and "v0042" in details
        assert str(stack.settings.registry) not in details
    # the valid name still works, and the server only ever loaded its one version
    info = srv.policy.GetModel(policy_pb2.GetModelRequest(model_version="v0001"), timeout=20)
    assert info.model_version == "v0001" and info.current
    assert srv.policy.Generate(policy_pb2.GenerateRequest(
        prompt="hi", model_version="v0001", sampling=policy_pb2.SamplingParams(max_new_tokens=2)),
        timeout=60).model_version == "v0001"
    text = srv.metrics_text()
    assert metric_value(text, "rlhf_model_swap_failures_total") == 0
    assert list(srv.server.pool._loaded) == ["v0001"]
