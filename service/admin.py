"""AdminService: operator RPCs over registry.operations; plain exceptions -> status codes, once."""

from __future__ import annotations

import asyncio
import functools

from registry import ChecksumError, InvalidVersionName, VersionNotFound
from registry.operations import NoParent, Operations, RoundRunning
from registry.probe import UnloadableVersion
from rlhf.v1 import admin_pb2, admin_pb2_grpc
from service.errors import ApiError, FailedPrecondition, InvalidArgument, NotFound
from service.servicer import translate_errors


def api_error(exc: Exception, version: str = "") -> ApiError | None:
    """The status an operations exception answers with (None: not one of ours)."""
    if isinstance(exc, InvalidVersionName):
        return InvalidArgument(f"model_version {exc}")
    if isinstance(exc, VersionNotFound):
        return NotFound(f"model_version {version[:64]!r} is not registered")
    if isinstance(exc, (ChecksumError, UnloadableVersion)):
        return FailedPrecondition(f"refusing to make {version[:64]} current (the pointer did not move): {exc}")
    if isinstance(exc, (NoParent, RoundRunning)):
        return FailedPrecondition(str(exc))
    return None


async def _call(fn, *args, version: str = ""):
    """Runs a blocking operation off the event loop; maps its exception once."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    except Exception as exc:
        mapped = api_error(exc, version)
        if mapped is None:
            raise
        raise mapped from exc


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, ops: Operations):
        self.ops = ops

    @translate_errors
    async def TriggerRound(self, request, context):
        return admin_pb2.TriggerRoundResponse(task_id=await _call(self.ops.trigger_round, request.force))

    @translate_errors
    async def Promote(self, request, context):
        version = request.model_version
        return await _call(self.ops.move_pointer, version, "promote", version=version)

    @translate_errors
    async def Rollback(self, request, context):
        target = await _call(self.ops.rollback_target, request.model_version, version=request.model_version)
        return await _call(self.ops.move_pointer, target, "rollback", version=target)

    @translate_errors
    async def ListModels(self, request, context):
        return await _call(self.ops.list_models)
