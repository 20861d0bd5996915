"""The serving core behind PolicyService: generation and feedback intake.

Plain async Python: takes protobuf requests, raises service.errors on bad input, returns results.
The gRPC servicer only translates.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field

from rlhf.v1 import policy_pb2, records_pb2
from registry import ChecksumError, InvalidVersionName, Registry
from registry.info import model_info
from registry.probe import UnloadableVersion
from registry.registry import check_version_name
from service import validation
from service.decoder import LoadedModel, Row
from service.engine import Engine, EngineStopped, Job, QueueFull
from rlhf_core.feedback_log import CONFLICT, DUPLICATE
from service.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied,
                            RateLimited, ResourceExhausted, Unavailable)
from service.feedback import FeedbackStore
from service.metrics import Metrics
from service.model_pool import ModelPool
from training.text_format import render_prompt

FINISH = {"eos": policy_pb2.FINISH_REASON_EOS, "length": policy_pb2.FINISH_REASON_LENGTH,
          "stop": policy_pb2.FINISH_REASON_STOP}
KIND_LABEL = {records_pb2.FeedbackEvent.KIND_THUMBS_UP: "thumbs_up",
              records_pb2.FeedbackEvent.KIND_THUMBS_DOWN: "thumbs_down",
              records_pb2.FeedbackEvent.KIND_COMPARISON: "comparison"}
log = logging.getLogger(__name__)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_version_name(version: str) -> None:
    try:
        check_version_name(version)
    except InvalidVersionName as exc:
        raise InvalidArgument(f"model_version {exc}") from exc


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
    tokens: list[str] = field(default_factory=list)
    """Feedback tokens, one per candidate (anonymous requests only)."""
    recorded: bool = True
    """False when the generation records could not be stored (Redis down or full)."""


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
        """The current model, or a pinned registered version (loaded off the event loop).

        The name is checked against the registry's naming before anything touches the disk:
        malformed -> INVALID_ARGUMENT, unknown -> NOT_FOUND, unservable -> FAILED_PRECONDITION."""
        if not version:
            if self.pool.current is None:
                raise Unavailable("no model is loaded yet; retry shortly")
            return self.pool.current
        _check_version_name(version)
        lm = self.pool.get(version)
        if lm is not None:
            return lm
        if not self.registry.exists(version):
            known = ", ".join(self.registry.list_versions()[-5:]) or "none"
            raise NotFound(f"model_version {version!r} is not registered (latest: {known})")
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.pool.load_pinned, version)
        except (ChecksumError, UnloadableVersion) as exc:
            raise FailedPrecondition(f"model_version {version!r} cannot be served: {exc}") from exc

    def model_info(self, version: str) -> policy_pb2.ModelInfo:
        """The served version's (or a named one's) registry entry, with this server's view of the
        pointer (pointer_version, fallback, refused_reason); reads files, so off the loop."""
        current = self.pool.current.version if self.pool.current else None
        if version:
            _check_version_name(version)
        version = version or current
        if not version:
            raise Unavailable("no model is loaded yet")
        if not self.registry.exists(version):
            raise NotFound(f"model_version {version!r} is not registered")
        info = model_info(self.registry.manifest(version), current)
        state = self.pool.state
        info.pointer_version = state.pointer or current or ""
        if version == current:
            info.fallback = state.fallback
            info.refused_reason = state.refused_reason
        return info

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
        tokens = [] if req.user_id else [secrets.token_urlsafe(24) for _ in specs]
        return Pending(request=req, lm=lm, job=job, done=done, response_ids=[uuid.uuid4().hex for _ in specs],
                       request_id=uuid.uuid4().hex, started=time.perf_counter(), tokens=tokens)

    async def finish_generation(self, pending: Pending, rows: list[Row]) -> None:
        """Stores a generation record per finished candidate (before the client sees its id).

        When Redis is down or full the responses are still returned (the model is in memory), marked
        `feedback_unavailable`, and counted in rlhf_generation_records_dropped_total.
        """
        now = records_pb2.GenerationRecord().created_at
        now.FromNanoseconds(time.time_ns())
        tokens = pending.tokens or [""] * len(rows)
        records = [
            records_pb2.GenerationRecord(
                response_id=rid, prompt=pending.request.prompt, response=row.text, num_tokens=len(row.tokens),
                model_version=pending.lm.version, user_id=pending.request.user_id, created_at=now,
                finish_reason=row.finish or "", request_id=pending.request_id,
                feedback_token_sha256=_token_digest(token) if token else "")
            for rid, row, token in zip(pending.response_ids, rows, tokens) if row.finish in FINISH
        ]
        try:
            await self.store.record_generations(records)
        except (Unavailable, ResourceExhausted) as exc:
            pending.recorded = False
            self.metrics.generation_records_dropped.inc(len(records))
            log.warning("served %d response(s) that cannot be rated: %s", len(records), exc.message)
        self.metrics.e2e.labels(pending.lm.version).observe(time.perf_counter() - pending.started)

    def to_response(self, pending: Pending, rows: list[Row]) -> policy_pb2.GenerateResponse:
        return policy_pb2.GenerateResponse(
            model_version=pending.lm.version,
            prompt_tokens=len(pending.job.prompt_ids),
            candidates=[
                policy_pb2.Candidate(response_id=rid, text=row.text, finish_reason=FINISH.get(row.finish, 0),
                                     num_tokens=len(row.tokens), index=i, **self.feedback_fields(pending, i))
                for i, (rid, row) in enumerate(zip(pending.response_ids, rows))
            ],
        )

    @staticmethod
    def feedback_fields(pending: Pending, index: int) -> dict:
        """feedback_token / feedback_unavailable of candidate `index` (Candidate and last GenerateChunk)."""
        if not pending.recorded:
            return {"feedback_unavailable": True}
        return {"feedback_token": pending.tokens[index]} if pending.tokens else {}

    async def submit_feedback(self, req: policy_pb2.FeedbackRequest) -> policy_pb2.FeedbackAck:
        ids = validation.check_feedback(req)
        await self._rate_limit(req, ids)
        records = await self.store.get_generations(ids)
        for rid, rec in zip(ids, records):
            if rec is None:
                raise NotFound(f"response_id {rid!r} is unknown or older than the retention period")
        self._check_may_rate(req, records)
        event = self._event(req, records)
        feedback_id, status = await self.store.append(event)
        if status == CONFLICT:
            raise AlreadyExists(f"idempotency_key {req.idempotency_key!r} was already used for different feedback; "
                                "nothing was stored: use a new key for new feedback (reuse a key only to retry the "
                                "same request)")
        if status == DUPLICATE:
            self.metrics.feedback_duplicates.inc()
        else:
            self.metrics.feedback.labels(KIND_LABEL[event.kind], event.model_version).inc()
        return policy_pb2.FeedbackAck(feedback_id=feedback_id, duplicate=status == DUPLICATE)

    async def _rate_limit(self, req: policy_pb2.FeedbackRequest, ids: list[str]) -> None:
        """A token bucket per user_id (anonymous feedback: per rated response)."""
        rate, burst = self.settings.feedback_rate_per_s, self.settings.feedback_burst
        if rate <= 0:
            return
        subject = f"user:{req.user_id}" if req.user_id else f"response:{ids[0]}"
        retry_ms = await self.store.take_token(subject, rate, burst)
        if retry_ms:
            who = f"user {req.user_id!r}" if req.user_id else f"anonymous feedback on response {ids[0]!r}"
            self.metrics.feedback_rate_limited.inc()
            raise RateLimited(f"feedback rate limit: {who} is limited to {rate:g} feedback per second (bursts of "
                              f"{burst}); nothing was stored: retry after {retry_ms} ms (trailing metadata "
                              f"retry-after-ms)", retry_ms)

    @staticmethod
    def _check_may_rate(req: policy_pb2.FeedbackRequest, records) -> None:
        """Only the user a response was served to may rate it; anonymous responses need their token."""
        tokens = [req.feedback_token, req.rejected_feedback_token]
        for rec, token, name in zip(records, tokens, ("feedback_token", "rejected_feedback_token")):
            if rec.user_id:
                if req.user_id != rec.user_id:
                    raise PermissionDenied(f"response {rec.response_id!r} was served to another user: only the "
                                           "user_id that Generate carried may rate it")
            elif rec.feedback_token_sha256:
                if not token or not hmac.compare_digest(_token_digest(token), rec.feedback_token_sha256):
                    what = "is missing" if not token else "does not match"
                    raise PermissionDenied(f"{name} {what}: response {rec.response_id!r} was generated without a "
                                           "user_id; send the feedback_token its Candidate carried")

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
