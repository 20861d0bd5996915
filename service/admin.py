"""AdminService: operator RPCs (trigger a round, promote, roll back, list models)."""

from __future__ import annotations

import asyncio
import functools
from typing import Callable

import redis

from registry import ChecksumError, InvalidVersionName, Registry, VersionNotFound
from registry.info import live_server, model_info
from registry.pointer import current_version, set_current
from registry.probe import UnloadableVersion
from registry.registry import check_version_name
from rlhf.v1 import admin_pb2, admin_pb2_grpc
from rlhf_serve.keys import Keys
from rlhf_serve.tasks import DEFAULT_QUEUE, ROUND_TASK, make_sender
from service.errors import FailedPrecondition, InvalidArgument, NotFound
from service.heartbeat import live_servers
from service.servicer import translate_errors


def checked_version(version: str) -> str:
    """A client-given version name, or INVALID_ARGUMENT (before anything touches the disk)."""
    try:
        return check_version_name(version)
    except InvalidVersionName as exc:
        raise InvalidArgument(f"model_version {exc}") from exc


class AdminCore:
    """Blocking operator actions (run them off the event loop)."""

    def __init__(self, settings, registry: Registry, keys: Keys, probe: Callable[[str], object] | None = None):
        """`probe(version)` loads and runs a candidate before the pointer moves (raises if it
        cannot serve); default: registry.probe on the CPU. A server passes its ModelPool.load."""
        self.settings = settings
        self.registry = registry
        self.keys = keys
        self.probe = probe
        self.redis = redis.Redis.from_url(settings.redis_url)
        self._celery = None

    def trigger_round(self, force: bool) -> str:
        if self._celery is None:
            self._celery = make_sender(self.settings)
        result = self._celery.send_task(ROUND_TASK, kwargs={"force": force, "reason": "admin"}, queue=DEFAULT_QUEUE)
        return result.id

    def move_pointer(self, version: str, action: str):
        checked_version(version)
        try:
            set_current(self.redis, self.keys, self.registry, version, action, probe=self.probe)
        except VersionNotFound as exc:
            raise NotFound(f"model_version {version!r} is not registered") from exc
        except (ChecksumError, UnloadableVersion) as exc:
            raise FailedPrecondition(f"refusing to make {version} current (the pointer did not move): {exc}") from exc
        return model_info(self.registry.manifest(version), version)

    def rollback_target(self, version: str) -> str:
        if version:
            return checked_version(version)
        current = current_version(self.redis, self.keys, self.registry)
        parent = self.registry.manifest(current).parent_version if self.registry.exists(current) else ""
        if not parent:
            raise FailedPrecondition(f"current version {(current or 'none')[:40]} has no parent to roll back to")
        return parent

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


def _off_loop(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, core: AdminCore):
        self.core = core

    @translate_errors
    async def TriggerRound(self, request, context):
        return admin_pb2.TriggerRoundResponse(task_id=await _off_loop(self.core.trigger_round, request.force))

    @translate_errors
    async def Promote(self, request, context):
        return await _off_loop(self.core.move_pointer, request.model_version, "promote")

    @translate_errors
    async def Rollback(self, request, context):
        target = await _off_loop(self.core.rollback_target, request.model_version)
        return await _off_loop(self.core.move_pointer, target, "rollback")

    @translate_errors
    async def ListModels(self, request, context):
        return await _off_loop(self.core.list_models)
