"""Test helpers: a real server on a loopback port, running in its own thread and event loop."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import redis

from registry import Registry
from registry.pointer import set_current
from rlhf.v1 import admin_pb2_grpc, policy_pb2_grpc, records_pb2
from rlhf_serve.keys import Keys
from rlhf_serve.settings import Settings
from service.app import BackgroundServer


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"


def delete_prefix(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)


def publish_model(registry: Registry, model_dir: Path, parent: str = "", promoted: bool = True,
                  description: str = "test") -> str:
    manifest = records_pb2.ModelManifest(parent_version=parent, base_model=str(model_dir))
    manifest.training.description = description
    manifest.promotion.promoted = promoted
    if parent:
        manifest.reference_version = registry.manifest(parent).reference_version
    return registry.publish(model_dir, manifest).version


def point_at(settings: Settings, version: str) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    set_current(r, Keys(settings.key_prefix), Registry(settings.registry), version, "test")


class ServerThread(BackgroundServer):
    """A server on 127.0.0.1 with free ports, plus sync stubs on a channel to it."""

    def start(self) -> "ServerThread":
        super().start(120)
        self.target = f"127.0.0.1:{self.server.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        return self

    def stop(self, grace: float = 10.0) -> None:
        self.channel.close()
        super().stop(grace)

    def metrics_text(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()


# --- added for the integration suite: module-scoped servers -----------------------------------

def make_settings(redis_url: str, registry_root: Path, **overrides) -> Settings:
    """Settings for a test server on loopback with free ports and a unique key prefix."""
    values = dict(redis_url=redis_url, key_prefix=unique_prefix(), registry=registry_root, port=0, metrics_port=0,
                  host="127.0.0.1", device="cpu", batch_wait_ms=20.0)
    values.update(overrides)
    return Settings(**values)


class ServingStack:
    """A registry holding the tiny model as v0001 (current) and a running server on it."""

    def __init__(self, redis_url: str, registry_root: Path, model_dir: Path, start: bool = True, **overrides):
        self.settings = make_settings(redis_url, registry_root, **overrides)
        self.model_dir = model_dir
        self.registry = Registry(self.settings.registry)
        self.v1 = publish_model(self.registry, model_dir, description="tiny sft")
        point_at(self.settings, self.v1)
        self.redis = redis.Redis.from_url(redis_url)
        self.server = ServerThread(self.settings).start() if start else None

    def close(self) -> None:
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            delete_prefix(self.settings.redis_url, self.settings.key_prefix)
            self.redis.close()


def metric_samples(text: str) -> list:
    """Every sample of a /metrics page, as prometheus_client Sample tuples."""
    from prometheus_client.parser import text_string_to_metric_families
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0.0 when none)."""
    return sum(s.value for s in metric_samples(text)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
