"""gRPC edge of PolicyService: proto in, core call, proto out; ApiError -> status code."""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from rlhf.v1 import policy_pb2, policy_pb2_grpc
from service.errors import UNAVAILABLE_STORE, ApiError, is_store_outage
from service.policy import FINISH, PolicyCore

log = logging.getLogger("rlhf_serve.server")


def translate_errors(fn):
    """Turns ApiError (and a lost Redis) into the matching status code and message.

    Anything else reaches the interceptor, which answers INTERNAL with a reference to the log line.
    """
    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except ApiError as exc:
            if getattr(exc, "trailing_metadata", None):
                context.set_trailing_metadata(exc.trailing_metadata)
            await context.abort(exc.code, exc.message)
        except Exception as exc:
            if not is_store_outage(exc):
                raise
            log.warning("%s: Redis unreachable: %r", fn.__name__, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_STORE)
    return wrapper


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, core: PolicyCore):
        self.core = core

    @translate_errors
    async def Generate(self, request, context):
        pending = await self.core.start_generation(request, context.time_remaining(), stream=False)
        try:
            rows = await pending.done
        finally:
            pending.job.cancelled.set()  # no-op when finished; stops compute when the call is cancelled
        if any(r.finish == "cancelled" for r in rows):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before generation finished")
        await self.core.finish_generation(pending, rows)
        return self.core.to_response(pending, rows)

    async def GenerateStream(self, request, context):
        try:
            pending = await self.core.start_generation(request, context.time_remaining(), stream=True)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
        try:
            async for chunk in self._chunks(pending):
                yield chunk
            rows = pending.done.result()
            if any(r.finish == "cancelled" for r in rows):
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before generation finished")
            await self.core.finish_generation(pending, rows)
            for i, (rid, row) in enumerate(zip(pending.response_ids, rows)):
                yield policy_pb2.GenerateChunk(index=i, response_id=rid, model_version=pending.lm.version,
                                               finish_reason=FINISH.get(row.finish, 0), num_tokens=len(row.tokens),
                                               **self.core.feedback_fields(pending, i))
        except ApiError as exc:  # this call's own candidate failed (e.g. its sampling settings)
            await context.abort(exc.code, exc.message)
        finally:
            pending.job.cancelled.set()

    async def _chunks(self, pending):
        """Text deltas as the decoder produces them, until every candidate is finished."""
        queue, done = pending.job.stream, pending.done
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                while not queue.empty():
                    yield self._delta(pending, *queue.get_nowait())
                done.result()  # re-raises a decoding failure
                return
            yield self._delta(pending, *getter.result())

    @staticmethod
    def _delta(pending, index: int, text: str) -> policy_pb2.GenerateChunk:
        return policy_pb2.GenerateChunk(index=index, response_id=pending.response_ids[index], text_delta=text,
                                        model_version=pending.lm.version)

    @translate_errors
    async def SubmitFeedback(self, request, context):
        return await self.core.submit_feedback(request)

    @translate_errors
    async def GetModel(self, request, context):
        return await asyncio.get_running_loop().run_in_executor(None, self.core.model_info, request.model_version)
