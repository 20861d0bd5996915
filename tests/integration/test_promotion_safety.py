"""Promotion safety: a version whose checksums match but whose weights are broken cannot be
promoted; a server started on one serves the newest loadable ancestor and says so; a refusal is
retried when the pointer is set again or the files change; `models list` shows live servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis
import torch
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from safetensors.torch import load_file, save_file

from registry import Registry
from registry.pointer import set_current
from registry.probe import UnloadableVersion, probe_version
from registry.registry import MANIFEST, sha256_file
from rlhf.v1 import admin_pb2, policy_pb2, records_pb2
from rlhf_core.keys import Keys
from tests.helpers import ServerThread, delete_prefix, make_settings, metric_value, point_at, publish_model

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(model_poll_s=0.3, model_retry_max_s=1.0, heartbeat_s=0.5)


def rewrite_checksums(registry: Registry, version: str) -> None:
    """Makes the manifest match whatever the files now hold (a 'checksum-valid' corruption)."""
    base = registry.path(version)
    manifest = json_format.Parse((base / MANIFEST).read_text(), records_pb2.ModelManifest())
    for entry in manifest.files:
        entry.sha256, entry.size = sha256_file(base / entry.path), (base / entry.path).stat().st_size
    (base / MANIFEST).write_text(json_format.MessageToJson(manifest, indent=1))


def break_shapes(registry: Registry, version: str) -> bytes:
    """Rewrites one weight with the wrong shape, regenerates checksums; returns the good bytes."""
    weights = next(registry.path(version).glob("*.safetensors"))
    good = weights.read_bytes()
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if k.endswith("weight") and tensors[k].dim() == 2)
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] // 2 + 1)
    save_file(tensors, weights, metadata={"format": "pt"})
    rewrite_checksums(registry, version)
    return good


def repair(registry: Registry, version: str, good: bytes) -> None:
    next(registry.path(version).glob("*.safetensors")).write_bytes(good)
    rewrite_checksums(registry, version)


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_serve.cli", *args, "--redis-url", settings.redis_url,
                           "--registry", str(settings.registry), "--key-prefix", settings.key_prefix],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


def wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def served(srv) -> policy_pb2.ModelInfo:
    return srv.policy.GetModel(policy_pb2.GetModelRequest(), timeout=20)


def health(srv, service: str) -> int:
    return health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=10).status


def test_probe_refuses_checksum_valid_corruption(tmp_path, tiny_model_dir, redis_url):
    reg = Registry(tmp_path / "reg")
    v1 = publish_model(reg, tiny_model_dir)
    v2 = publish_model(reg, tiny_model_dir, parent=v1)
    probe_version(reg, v2)  # a good version passes
    good = break_shapes(reg, v2)
    reg.verify(v2)  # checksums match...
    with pytest.raises(UnloadableVersion, match="wrong shape") as err:  # ...but it is not a working model
        probe_version(reg, v2)
    assert str(tmp_path) not in str(err.value)
    settings = make_settings(redis_url, reg.root)
    r, keys = redis.Redis.from_url(redis_url), Keys(settings.key_prefix)
    try:
        point_at(settings, v1)
        with pytest.raises(UnloadableVersion):
            set_current(r, keys, reg, v2, "test")
        assert r.get(keys.current_version) == b"v0001"  # the pointer did not move
        repair(reg, v2, good)
        set_current(r, keys, reg, v2, "test")
        assert r.get(keys.current_version) == b"v0002"
    finally:
        delete_prefix(redis_url, settings.key_prefix)


@pytest.fixture
def broken_current(redis_url, tiny_model_dir, tmp_path):
    """v0001 <- v0002 <- v0003 (current, weights of the wrong shape with valid checksums)."""
    settings = make_settings(redis_url, tmp_path / "registry", **FAST)
    reg = Registry(settings.registry)
    v1 = publish_model(reg, tiny_model_dir)
    v2 = publish_model(reg, tiny_model_dir, parent=v1, description="good")
    v3 = publish_model(reg, tiny_model_dir, parent=v2, description="broken")
    point_at(settings, v3)
    good = break_shapes(reg, v3)
    yield settings, reg, good
    delete_prefix(redis_url, settings.key_prefix)


def test_server_on_broken_current_serves_ancestor_then_repromote_fixes_it(broken_current):
    settings, reg, good = broken_current
    with ServerThread(settings).start() as srv:  # starts (no crash loop) on the newest loadable ancestor
        info = served(srv)
        assert info.model_version == "v0002" and info.pointer_version == "v0003" and info.fallback
        assert "v0003" in info.refused_reason and "wrong shape" in info.refused_reason
        assert str(settings.registry) not in info.refused_reason
        gen = srv.policy.Generate(policy_pb2.GenerateRequest(prompt="hi", sampling=policy_pb2.SamplingParams(
            max_new_tokens=3)), timeout=60)
        assert gen.model_version == "v0002"
        text = srv.metrics_text()
        assert metric_value(text, "rlhf_model_pointer_mismatch") == 1
        assert metric_value(text, "rlhf_model_fallback") == 1
        assert metric_value(text, "rlhf_model_info", model_version="v0002") == 1
        assert health(srv, "") == health_pb2.HealthCheckResponse.SERVING
        assert health(srv, "rlhf.v1.CurrentModel") == health_pb2.HealthCheckResponse.NOT_SERVING
        # `models list` shows the pointer and what the live server actually serves
        listing = srv.admin.ListModels(admin_pb2.ListModelsRequest(), timeout=20)
        assert listing.pointer_version == "v0003" and [m.current for m in listing.models] == [False, False, True]
        (live,) = listing.servers
        assert live.model_version == "v0002" and live.pointer_version == "v0003" and live.fallback
        assert "wrong shape" in live.refused_reason and live.last_heartbeat.seconds > 0
        assert list(listing.models[1].served_by) == [live.server_id] and not listing.models[2].served_by
        out = cli(settings, "models", "list")
        assert out.returncode == 0, out.stderr
        assert "live servers: 1 (pointer: v0003)" in out.stdout
        assert re.search(rf"^  {live.server_id}  serves=v0002 .*FALLBACK: v0003 .*wrong shape", out.stdout, re.M)
        refused = cli(settings, "models", "promote", "v0003")
        assert refused.returncode == 2 and "wrong shape" in refused.stderr
        # promoting it again while it is still broken is refused before the pointer moves
        with pytest.raises(grpc.RpcError) as err:
            srv.admin.Promote(admin_pb2.PromoteRequest(model_version="v0003"), timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "wrong shape" in err.value.details()
        assert str(settings.registry) not in err.value.details()
        # fixed and promoted again: served without a restart
        repair(reg, "v0003", good)
        srv.admin.Promote(admin_pb2.PromoteRequest(model_version="v0003"), timeout=60)
        assert wait_for(lambda: served(srv).model_version == "v0003")
        info = served(srv)
        assert info.pointer_version == "v0003" and not info.fallback and not info.refused_reason
        assert wait_for(lambda: metric_value(srv.metrics_text(), "rlhf_model_pointer_mismatch") == 0)
        assert metric_value(srv.metrics_text(), "rlhf_model_fallback") == 0
        assert wait_for(lambda: health(srv, "rlhf.v1.CurrentModel") == health_pb2.HealthCheckResponse.SERVING)
        assert wait_for(lambda: srv.admin.ListModels(admin_pb2.ListModelsRequest(), timeout=20)
                        .servers[0].model_version == "v0003")
    # a stopped server leaves the list
    r = redis.Redis.from_url(settings.redis_url)
    assert r.zcard(Keys(settings.key_prefix).servers) == 0


def test_refusal_is_retried_when_pointer_set_again_or_files_change(broken_current):
    settings, reg, good = broken_current
    r, keys = redis.Redis.from_url(settings.redis_url), Keys(settings.key_prefix)
    point_at(settings, "v0002")
    with ServerThread(settings).start() as srv:
        assert served(srv).model_version == "v0002"
        # the pointer is moved to the broken version without the probe (e.g. an older tool)
        set_current(r, keys, reg, "v0003", "test", probe=lambda v: None)
        assert wait_for(lambda: metric_value(srv.metrics_text(), "rlhf_model_swap_failures_total") == 1)
        time.sleep(1.5)  # several polls: not retried while nothing changed
        text = srv.metrics_text()
        assert metric_value(text, "rlhf_model_swap_failures_total") == 1
        assert metric_value(text, "rlhf_model_swap_retries_total") == 0
        assert metric_value(text, "rlhf_model_pointer_mismatch") == 1
        # set to it again: retried once (after the back-off), refused again
        set_current(r, keys, reg, "v0003", "test", probe=lambda v: None)
        assert wait_for(lambda: metric_value(srv.metrics_text(), "rlhf_model_swap_retries_total") == 1)
        time.sleep(1.5)
        text = srv.metrics_text()
        assert metric_value(text, "rlhf_model_swap_retries_total") == 1
        assert metric_value(text, "rlhf_model_swap_failures_total") == 2
        assert served(srv).model_version == "v0002"
        for _ in range(2):  # a client pinning it is refused (the second time without another load)
            with pytest.raises(grpc.RpcError) as err:
                srv.policy.Generate(policy_pb2.GenerateRequest(prompt="hi", model_version="v0003"), timeout=60)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "wrong shape" in err.value.details()
        # its files are fixed (no promote): retried and served
        repair(reg, "v0003", good)
        pinned = srv.policy.Generate(policy_pb2.GenerateRequest(
            prompt="hi", model_version="v0003", sampling=policy_pb2.SamplingParams(max_new_tokens=3)), timeout=60)
        assert pinned.model_version == "v0003"
        assert wait_for(lambda: served(srv).model_version == "v0003")
        assert metric_value(srv.metrics_text(), "rlhf_model_pointer_mismatch") == 0
        gen = srv.policy.Generate(policy_pb2.GenerateRequest(prompt="hi", sampling=policy_pb2.SamplingParams(
            max_new_tokens=3)), timeout=60)
        assert gen.model_version == "v0003"


def test_server_without_any_loadable_version_fails_to_start(broken_current, tiny_model_dir):
    settings, reg, _ = broken_current
    for v in ("v0001", "v0002"):
        break_shapes(reg, v)
    with pytest.raises(RuntimeError, match="none of its ancestors"):
        ServerThread(settings).start()


def test_concurrent_loads_in_one_process_keep_tied_weights(tiny_model_dir):
    """from_pretrained is not thread-safe (tied weights came back missing in most concurrent loads);
    load_checked serialises loads, so a swap and a pinned load at once both get a working model."""
    import threading

    from registry.probe import load_checked
    errors = []

    def load():
        for _ in range(2):
            try:
                load_checked(tiny_model_dir, "v0001", torch.device("cpu"), torch.float32)
            except UnloadableVersion as exc:
                errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_heartbeats_of_vanished_servers_are_not_listed(redis_url, tmp_path):
    """A server killed without a goodbye drops out when its heartbeat key expires."""
    from registry.operations import live_servers
    settings = make_settings(redis_url, tmp_path / "registry")
    r, keys = redis.Redis.from_url(redis_url), Keys(settings.key_prefix)
    try:
        now = time.time()
        r.set(keys.server("alive"), json.dumps({"server_id": "alive", "model_version": "v0001", "started": now,
                                                "at": now}), px=5000)
        r.set(keys.server("dying"), json.dumps({"server_id": "dying", "model_version": "v0001", "started": now,
                                                "at": now}), px=50)
        r.zadd(keys.servers, {"alive": now, "dying": now, "ancient": now - 7200})
        time.sleep(0.2)
        assert [s["server_id"] for s in live_servers(r, keys)] == ["alive"]
        assert r.zrange(keys.servers, 0, -1) == [b"alive"]
    finally:
        delete_prefix(redis_url, settings.key_prefix)
