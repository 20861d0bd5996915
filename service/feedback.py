"""The service's Redis writes: generation records and the feedback stream.

Feedback is appended with one Lua script, so the idempotency check, the stream append and the
key's registration happen atomically: a retried request can never be stored twice, and the ack
is sent only after Redis has replied (i.e. the entry is in the stream).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from rlhf.v1 import records_pb2
from rlhf_serve.feedback_log import APPEND_SCRIPT
from rlhf_serve.keys import Keys


class FeedbackStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, generation_ttl_s: int, idempotency_ttl_s: int,
                 recent_prompts: int):
        self.r = client
        self.keys = keys
        self.generation_ttl_s = generation_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.recent_prompts = recent_prompts
        self._append = client.register_script(APPEND_SCRIPT)

    async def record_generations(self, records: list[records_pb2.GenerationRecord]) -> None:
        """Stores each candidate under its response_id and remembers the prompt for training."""
        if not records:
            return
        pipe = self.r.pipeline(transaction=True)
        for rec in records:
            pipe.set(self.keys.generation(rec.response_id), rec.SerializeToString(), ex=self.generation_ttl_s)
        pipe.lpush(self.keys.recent_prompts, records[0].prompt)
        pipe.ltrim(self.keys.recent_prompts, 0, self.recent_prompts - 1)
        await pipe.execute()

    async def get_generations(self, response_ids: list[str]) -> list[records_pb2.GenerationRecord | None]:
        raw = await self.r.mget([self.keys.generation(rid) for rid in response_ids])
        return [records_pb2.GenerationRecord.FromString(b) if b else None for b in raw]

    async def append(self, event: records_pb2.FeedbackEvent) -> tuple[str, bool]:
        """Appends one event; returns (feedback_id, duplicate)."""
        idem = self.keys.idempotency(event.user_id, event.idempotency_key) if event.idempotency_key else ""
        kind = records_pb2.FeedbackEvent.Kind.Name(event.kind)
        feedback_id, duplicate = await self._append(
            keys=[self.keys.feedback_stream, idem],
            args=[self.idempotency_ttl_s, kind, event.SerializeToString()],
        )
        if isinstance(feedback_id, bytes):
            feedback_id = feedback_id.decode()
        return feedback_id, bool(duplicate)
