"""The Redis key layout, in one place (documented in the README's "Redis layout").

Every key starts with the deployment's `key_prefix` (default `rlhf:`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "rlhf:"

    def generation(self, response_id: str) -> str:
        """STRING: a serialized `rlhf.v1.GenerationRecord`, expires after generation_ttl_s."""
        return f"{self.prefix}gen:{response_id}"

    @property
    def feedback_stream(self) -> str:
        """STREAM: accepted feedback; each entry has field `event` (serialized FeedbackEvent)
        and `kind`. The entry id is the feedback_id. Never trimmed by the service."""
        return f"{self.prefix}feedback"

    def idempotency(self, user_id: str, key: str) -> str:
        """STRING: feedback_id stored under (user_id, idempotency_key), expires after
        idempotency_ttl_s."""
        digest = hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()[:32]
        return f"{self.prefix}idem:{digest}"

    @property
    def recent_prompts(self) -> str:
        """LIST: most recent real prompts (newest first), capped; PPO rollouts sample from it."""
        return f"{self.prefix}prompts:recent"

    @property
    def current_version(self) -> str:
        """STRING: the model version new requests get."""
        return f"{self.prefix}model:current"

    @property
    def model_events(self) -> str:
        """PUB/SUB channel: the new current version is published here on promote/rollback."""
        return f"{self.prefix}model:events"

    @property
    def model_history(self) -> str:
        """LIST: JSON lines of pointer moves (promote, rollback), newest first."""
        return f"{self.prefix}model:history"

    @property
    def round_lock(self) -> str:
        """STRING: held by the one training round running (SET NX with expiry)."""
        return f"{self.prefix}train:lock"

    @property
    def consumer_group(self) -> str:
        """Consumer group name of training workers on the feedback stream."""
        return "trainers"

    @property
    def round_counter(self) -> str:
        """STRING (integer): the number of the last round started; seeds each round."""
        return f"{self.prefix}train:round_counter"

    @property
    def active_rounds(self) -> str:
        """HASH: round_id -> JSON heartbeat (stage, worker, started_at, beat_at) of rounds started
        and not yet finished; the reaper abandons those whose heartbeat went silent."""
        return f"{self.prefix}train:active"

    @property
    def rounds(self) -> str:
        """LIST: JSON summaries of finished rounds, newest first."""
        return f"{self.prefix}train:rounds"
