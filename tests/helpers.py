"""Test helpers: registries holding the tiny model, pointers, and servers on loopback ports."""

from __future__ import annotations

from pathlib import Path

import redis

from registry import Registry
from registry.operations import Operations
from registry.pointer import set_current
from rlhf.v1 import records_pb2
from rlhf_core.keys import Keys
from rlhf_core.settings import Settings
from rlhf_serve.local import LocalServer, delete_prefix, metric_samples, metric_value  # noqa: F401
from rlhf_serve.local import unique_prefix as _unique_prefix


def unique_prefix() -> str:
    return _unique_prefix("test")


def publish_model(registry: Registry, model_dir: Path, parent: str = "", promoted: bool = True,
                  description: str = "test") -> str:
    manifest = records_pb2.ModelManifest(parent_version=parent, base_model=str(model_dir))
    manifest.training.description = description
    manifest.promotion.promoted = promoted
    if parent:
        manifest.reference_version = registry.manifest(parent).reference_version
    return registry.publish(model_dir, manifest).version


def register_v1(settings: Settings, model_dir: Path) -> str:
    """`model_dir` as version 1 (current), registered as `rlhf-serve bootstrap` registers one."""
    with Operations(settings) as ops:
        return ops.register_reference(model_dir, str(model_dir), "tiny sft", "test")


def point_at(settings: Settings, version: str) -> None:
    r = redis.Redis.from_url(settings.redis_url)
    set_current(r, Keys(settings.key_prefix), Registry(settings.registry), version, "test")


ServerThread = LocalServer  # a real server on a loopback port with sync stubs


# --- added for the integration suite: module-scoped servers -----------------------------------

def make_settings(redis_url: str, registry_root: Path, **overrides) -> Settings:
    """Settings for a test server on loopback with free ports and a unique key prefix."""
    values = dict(redis_url=redis_url, key_prefix=unique_prefix(), registry=registry_root, port=0, metrics_port=0,
                  host="127.0.0.1", device="cpu", batch_wait_ms=20.0, insecure_admin=True)
    values.update(overrides)
    return Settings(**values)


class ServingStack:
    """A registry holding the tiny model as v0001 (current) and a running server on it."""

    def __init__(self, redis_url: str, registry_root: Path, model_dir: Path, start: bool = True, **overrides):
        self.settings = make_settings(redis_url, registry_root, **overrides)
        self.model_dir = model_dir
        self.registry = Registry(self.settings.registry)
        self.v1 = register_v1(self.settings, model_dir)
        self.redis = redis.Redis.from_url(redis_url)
        self.server = ServerThread(self.settings).start() if start else None

    def close(self) -> None:
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            delete_prefix(self.settings.redis_url, self.settings.key_prefix)
            self.redis.close()


