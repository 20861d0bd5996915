"""The serving core behind PolicyService: generation and feedback intake.

Plain async Python: takes protobuf requests, raises service.errors on bad input, returns results.
The gRPC servicer only translates.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from rlhf.v1 import policy_pb2, records_pb2
from registry import ChecksumError, Registry
from registry.info import model_info
from service import validation
from service.decoder import LoadedModel, Row
from service.engine import Engine, EngineStopped, Job, QueueFull
from service.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from service.feedback import FeedbackStore
from service.metrics import Metrics
from service.model_pool import ModelPool
from training.text_format import render_prompt

FINISH = {"eos": policy_pb2.FINISH_REASON_EOS, "length": policy_pb2.FINISH_REASON_LENGTH,
          "stop": policy_pb2.FINISH_REASON_STOP}
KIND_LABEL = {records_pb2.FeedbackEvent.KIND_THUMBS_UP: "thumbs_up",
              records_pb2.FeedbackEvent.KIND_THUMBS_DOWN: "thumbs_down",
              records_pb2.FeedbackEvent.KIND_COMPARISON: "comparison"}


@dataclass
class Pending:
    """A generation in flight."""

    request: policy_pb2.GenerateRequest
    lm: LoadedModel
    job: Job
    done: asyncio.Future
    response_ids: list[str]
    request_id: str
    started: float


class PolicyCore:
    def __init__(self, settings, registry: Registry, pool: ModelPool, engine: Engine, store: FeedbackStore,
                 metrics: Metrics):
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.engine = engine
        self.store = store
        self.metrics = metrics

    async def resolve_model(self, version: str) -> LoadedModel:
        """The current model, or a pinned registered version (loaded off the event loop)."""
        if not version:
            if self.pool.current is None:
                raise Unavailable("no model is loaded yet; retry shortly")
            return self.pool.current
        if not self.registry.exists(version):
            known = ", ".join(self.registry.list_versions()[-5:]) or "none"
            raise NotFound(f"model_version {version!r} is not registered (latest: {known})")
        lm = self.pool.get(version)
        if lm is not None:
            return lm
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.pool.load, version, False)
        except ChecksumError as exc:
            raise FailedPrecondition(f"model_version {version!r} cannot be served: {exc}") from exc

    def model_info(self, version: str) -> policy_pb2.ModelInfo:
        """The served version's (or a named one's) registry entry; reads files, so off the loop."""
        current = self.pool.current.version if self.pool.current else None
        version = version or current
        if not version:
            raise Unavailable("no model is loaded yet")
        if not self.registry.exists(version):
            raise NotFound(f"model_version {version!r} is not registered")
        return model_info(self.registry.manifest(version), current)

    async def start_generation(self, req: policy_pb2.GenerateRequest, time_remaining: float | None,
                               stream: bool) -> Pending:
        validation.check_prompt(req.prompt, self.settings.max_prompt_chars)
        validation.check_short("user_id", req.user_id)
        specs = validation.sampling_specs(req, self.settings.default_max_new_tokens,
                                          self.settings.max_new_tokens_limit)
        lm = await self.resolve_model(req.model_version)
        text = render_prompt(lm.tokenizer, req.prompt)
        prompt_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) >= lm.max_context:
            raise InvalidArgument(
                f"prompt is {len(prompt_ids)} tokens; model {lm.version} has a context of {lm.max_context} tokens")
        deadline = time.monotonic() + time_remaining if time_remaining is not None else None
        job = Job(lm=lm, prompt_ids=prompt_ids, specs=specs, deadline=deadline,
                  stream=asyncio.Queue() if stream else None)
        try:
            done = self.engine.submit(job)
        except QueueFull as exc:
            raise ResourceExhausted(f"{exc}; retry with backoff") from exc
        except EngineStopped as exc:
            raise Unavailable(str(exc)) from exc
        return Pending(request=req, lm=lm, job=job, done=done, response_ids=[uuid.uuid4().hex for _ in specs],
                       request_id=uuid.uuid4().hex, started=time.perf_counter())

    async def finish_generation(self, pending: Pending, rows: list[Row]) -> None:
        """Stores a generation record per finished candidate (before the client sees its id)."""
        now = records_pb2.GenerationRecord().created_at
        now.FromNanoseconds(time.time_ns())
        records = [
            records_pb2.GenerationRecord(
                response_id=rid, prompt=pending.request.prompt, response=row.text, num_tokens=len(row.tokens),
                model_version=pending.lm.version, user_id=pending.request.user_id, created_at=now,
                finish_reason=row.finish or "", request_id=pending.request_id)
            for rid, row in zip(pending.response_ids, rows) if row.finish in FINISH
        ]
        await self.store.record_generations(records)
        self.metrics.e2e.labels(pending.lm.version).observe(time.perf_counter() - pending.started)

    def to_response(self, pending: Pending, rows: list[Row]) -> policy_pb2.GenerateResponse:
        return policy_pb2.GenerateResponse(
            model_version=pending.lm.version,
            prompt_tokens=len(pending.job.prompt_ids),
            candidates=[
                policy_pb2.Candidate(response_id=rid, text=row.text, finish_reason=FINISH.get(row.finish, 0),
                                     num_tokens=len(row.tokens), index=i)
                for i, (rid, row) in enumerate(zip(pending.response_ids, rows))
            ],
        )

    async def submit_feedback(self, req: policy_pb2.FeedbackRequest) -> policy_pb2.FeedbackAck:
        ids = validation.check_feedback(req)
        records = await self.store.get_generations(ids)
        for rid, rec in zip(ids, records):
            if rec is None:
                raise NotFound(f"response_id {rid!r} is unknown or older than the retention period")
        event = self._event(req, records)
        feedback_id, duplicate = await self.store.append(event)
        if duplicate:
            self.metrics.feedback_duplicates.inc()
        else:
            self.metrics.feedback.labels(KIND_LABEL[event.kind], event.model_version).inc()
        return policy_pb2.FeedbackAck(feedback_id=feedback_id, duplicate=duplicate)

    def _event(self, req: policy_pb2.FeedbackRequest, records) -> records_pb2.FeedbackEvent:
        first = records[0]
        event = records_pb2.FeedbackEvent(
            prompt=first.prompt, response=first.response, response_id=first.response_id,
            model_version=first.model_version, user_id=req.user_id, comment=req.comment,
            idempotency_key=req.idempotency_key, source="api")
        event.created_at.FromNanoseconds(time.time_ns())
        if req.WhichOneof("kind") == "rating":
            up = req.rating.thumbs_up
            event.kind = records_pb2.FeedbackEvent.KIND_THUMBS_UP if up else records_pb2.FeedbackEvent.KIND_THUMBS_DOWN
            return event
        rejected = records[1]
        if rejected.prompt != first.prompt:
            raise InvalidArgument("comparison's two responses answer different prompts; compare responses to one prompt")
        event.kind = records_pb2.FeedbackEvent.KIND_COMPARISON
        event.rejected_response = rejected.response
        event.rejected_response_id = rejected.response_id
        event.rejected_model_version = rejected.model_version
        return event
