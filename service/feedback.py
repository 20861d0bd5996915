"""The service's Redis writes: generation records, the feedback stream and the feedback rate limit.

Feedback is appended with one Lua script, so the idempotency check, the stream append and the
key's registration happen atomically: a retried request can never be stored twice, a key reused
for other content is refused, and the ack is sent only after Redis has replied (i.e. the entry
is in the stream).

Redis failures become service errors here, so that no caller sees a Redis exception:
unreachable/loading/read-only -> Unavailable (retryable), out of memory (maxmemory with
noeviction) -> ResourceExhausted.
"""

from __future__ import annotations

import contextlib
import logging

import redis.asyncio as aioredis
import redis.exceptions as rex

from rlhf.v1 import records_pb2
from rlhf_core.feedback_log import APPEND_SCRIPT, RATE_LIMIT_SCRIPT, content_digest
from rlhf_core.keys import Keys
from service.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


@contextlib.contextmanager
def redis_errors(what: str):
    """Turns a Redis failure during `what` into Unavailable / ResourceExhausted with a clear message."""
    try:
        yield
    except (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError) as exc:
        log.warning("feedback store failure during %s: %r", what, exc)
        raise Unavailable(f"the feedback store (Redis) is unavailable: {what} failed and nothing was stored; "
                          "this is temporary: retry with backoff (with the same idempotency_key)") from exc
    except rex.ResponseError as exc:
        if "OOM" not in str(exc) and "maxmemory" not in str(exc):
            raise
        log.error("feedback store is out of memory during %s: %s", what, exc)
        raise ResourceExhausted(f"the feedback store (Redis) is full (maxmemory reached): {what} failed and "
                                "nothing was stored; retry later; operators: raise maxmemory or lower "
                                "RLHF_FEEDBACK_STREAM_KEEP / RLHF_GENERATION_TTL_S") from exc


class FeedbackStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, generation_ttl_s: int, idempotency_ttl_s: int,
                 recent_prompts: int):
        self.r = client
        self.keys = keys
        self.generation_ttl_s = generation_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.recent_prompts = recent_prompts
        self._append = client.register_script(APPEND_SCRIPT)
        self._rate = client.register_script(RATE_LIMIT_SCRIPT)

    async def record_generations(self, records: list[records_pb2.GenerationRecord]) -> None:
        """Stores each candidate under its response_id and remembers the prompt for training."""
        if not records:
            return
        with redis_errors("recording the generated responses"):
            pipe = self.r.pipeline(transaction=True)
            for rec in records:
                pipe.set(self.keys.generation(rec.response_id), rec.SerializeToString(), ex=self.generation_ttl_s)
            pipe.lpush(self.keys.recent_prompts, records[0].prompt)
            pipe.ltrim(self.keys.recent_prompts, 0, self.recent_prompts - 1)
            await pipe.execute()

    async def get_generations(self, response_ids: list[str]) -> list[records_pb2.GenerationRecord | None]:
        with redis_errors("looking up the rated responses"):
            raw = await self.r.mget([self.keys.generation(rid) for rid in response_ids])
        return [records_pb2.GenerationRecord.FromString(b) if b else None for b in raw]

    async def take_token(self, subject: str, rate_per_s: float, burst: int) -> int:
        """One token from `subject`'s bucket: 0 when granted, else milliseconds until one is."""
        with redis_errors("checking the feedback rate limit"):
            allowed, retry_ms = await self._rate(keys=[self.keys.feedback_bucket(subject)],
                                                 args=[max(1, burst), rate_per_s, 1])
        return 0 if allowed else max(1, int(retry_ms))

    async def append(self, event: records_pb2.FeedbackEvent) -> tuple[str, int]:
        """Appends one event; returns (feedback_id, status) with status STORED/DUPLICATE/CONFLICT."""
        idem = self.keys.idempotency(event.user_id, event.idempotency_key) if event.idempotency_key else ""
        kind = records_pb2.FeedbackEvent.Kind.Name(event.kind)
        with redis_errors("storing the feedback"):
            feedback_id, status = await self._append(
                keys=[self.keys.feedback_stream, idem],
                args=[self.idempotency_ttl_s, kind, event.SerializeToString(), content_digest(event)],
            )
        if isinstance(feedback_id, bytes):
            feedback_id = feedback_id.decode()
        return feedback_id, int(status)
