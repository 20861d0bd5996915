"""Operator actions, below both edges: register the SFT reference, promote, roll back, trigger a
round, list, prune.

The CLI (`rlhf_serve/commands.py`) and AdminService (`service/admin.py`) call these. They raise
plain exceptions (`InvalidVersionName`, `VersionNotFound`, `ChecksumError`, `UnloadableVersion`,
`NoParent`, `RoundRunning`) that each edge maps once: to an exit code, to a gRPC status code.
Every call blocks (Redis, files, model loading): an async caller runs it in an executor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import redis

from registry.info import live_server, model_info
from registry.pointer import current_version, set_current
from registry.registry import Registry, check_version_name
from registry.retention import RetentionPlan, prune
from rlhf.v1 import admin_pb2, policy_pb2, records_pb2
from rlhf_core.keys import Keys
from rlhf_core.tasks import DEFAULT_QUEUE, ROUND_TASK, make_sender


class NoParent(RuntimeError):
    """Rollback without a version asked for, and the current version has no parent."""


class RoundRunning(RuntimeError):
    """A training round holds the round lock (prune waits for it to end)."""


def live_servers(r: redis.Redis, keys: Keys, horizon_s: float = 3600.0) -> list[dict]:
    """Heartbeats of live servers (service/heartbeat.py writes them), oldest start first;
    prunes vanished ones."""
    now = time.time()
    r.zremrangebyscore(keys.servers, "-inf", now - horizon_s)
    ids = [i.decode() if isinstance(i, bytes) else i for i in r.zrange(keys.servers, 0, -1)]
    if not ids:
        return []
    values = r.mget([keys.server(i) for i in ids])
    gone = [i for i, v in zip(ids, values) if v is None]
    if gone:
        r.zrem(keys.servers, *gone)
    servers = [json.loads(v) for v in values if v is not None]
    return sorted(servers, key=lambda s: (s.get("started", 0), s.get("server_id", "")))


class Operations:
    def __init__(self, settings, registry: Registry | None = None, probe: Callable[[str], object] | None = None):
        """`probe(version)` loads and runs a candidate before the pointer moves (raises if it
        cannot serve); default: registry.probe on the CPU. A server passes its ModelPool.load."""
        self.settings = settings
        self.registry = registry or Registry(settings.registry)
        self.keys = Keys(settings.key_prefix)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.probe = probe
        self._celery = None

    def _sender(self):
        if self._celery is None:
            self._celery = make_sender(self.settings)
        return self._celery

    def trigger_round(self, force: bool, reason: str = "admin") -> str:
        """Queues a round (by task name); returns the Celery task id."""
        result = self._sender().send_task(ROUND_TASK, kwargs={"force": force, "reason": reason}, queue=DEFAULT_QUEUE)
        return result.id

    def wait_for_round(self, task_id: str, timeout_s: float = 24 * 3600) -> dict:
        """The round's summary (or why it did not start), through this deployment's result backend."""
        app = self._sender()
        started = app.AsyncResult(task_id).get(timeout=3600)
        if not started.get("started"):
            return started
        summary = app.AsyncResult(started["result_id"]).get(timeout=timeout_s, propagate=False)
        return summary if isinstance(summary, dict) else {"failed": True, "error": str(summary)}

    def move_pointer(self, version: str, action: str) -> policy_pb2.ModelInfo:
        """Makes `version` current after it loads and runs; raises and leaves the pointer otherwise."""
        check_version_name(version)
        set_current(self.redis, self.keys, self.registry, version, action, probe=self.probe)
        return model_info(self.registry.manifest(version), version)

    def register_reference(self, model_dir: Path, base_model: str, description: str, action: str = "bootstrap",
                           seconds: float = 0.0) -> str:
        """Publishes `model_dir` as an SFT reference (promoted, no parent: version 1 of a fresh registry)
        and points serving at it; returns the version. `rlhf-serve bootstrap`, benchmarks and tests use it."""
        manifest = records_pb2.ModelManifest(base_model=base_model)
        manifest.training.description = description
        manifest.training.seconds = seconds
        manifest.promotion.promoted = True
        manifest.promotion.reason = "bootstrap: the SFT reference"
        manifest.promotion.decided_at.GetCurrentTime()
        version = self.registry.publish(Path(model_dir), manifest).version
        set_current(self.redis, self.keys, self.registry, version, action, probe=self.probe)
        return version

    def rollback_target(self, version: str = "") -> str:
        """`version` if given, else the current version's parent."""
        if version:
            return check_version_name(version)
        current = current_version(self.redis, self.keys, self.registry)
        parent = self.registry.manifest(current).parent_version if current and self.registry.exists(current) else ""
        if not parent:
            raise NoParent(f"current version {(current or 'none')[:40]} has no parent to roll back to")
        return parent

    def rollback(self, version: str = "") -> policy_pb2.ModelInfo:
        return self.move_pointer(self.rollback_target(version), "rollback")

    def list_models(self) -> admin_pb2.ListModelsResponse:
        """Every version (current = the pointer's) and every live server with what it serves."""
        current = current_version(self.redis, self.keys, self.registry)
        servers = [live_server(s) for s in live_servers(self.redis, self.keys)]
        models = []
        for v in self.registry.list_versions():
            info = model_info(self.registry.manifest(v), current)
            info.served_by.extend(s.server_id for s in servers if s.model_version == v)
            models.append(info)
        return admin_pb2.ListModelsResponse(models=models, servers=servers, pointer_version=current or "")

    def prune(self, keep_refused: int | None = None, dry_run: bool = False) -> RetentionPlan:
        """Registry retention (registry/retention.py); refused while a round holds the lock."""
        if self.redis.exists(self.keys.round_lock) and not dry_run:
            raise RoundRunning("a training round is running (round lock held); prune again after it")
        keep = self.settings.retention_keep_refused if keep_refused is None else keep_refused
        return prune(self.registry, self.redis, self.keys, keep, dry_run=dry_run)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> "Operations":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
