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
        and `kind`. The entry id is the feedback_id. Append-only; a snapshot trims what it has durably
        saved and acknowledged, keeping the newest feedback_stream_keep entries."""
        return f"{self.prefix}feedback"

    def idempotency(self, user_id: str, key: str) -> str:
        """STRING: "<feedback_id> <content digest>" stored under (user_id, idempotency_key), expires
        after idempotency_ttl_s. A reuse of the key with other content is refused."""
        digest = hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()[:32]
        return f"{self.prefix}idem:{digest}"

    def feedback_bucket(self, subject: str) -> str:
        """HASH {tokens, ts}: the feedback token bucket of one user (or, for anonymous feedback, of one
        response); expires once it would be full again."""
        digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
        return f"{self.prefix}ratelimit:feedback:{digest}"

    @property
    def recent_prompts(self) -> str:
        """LIST: most recent real prompts (newest first), capped; PPO rollouts sample from it."""
        return f"{self.prefix}prompts:recent"

    @property
    def current_version(self) -> str:
        """STRING: the model version new requests get."""
        return f"{self.prefix}model:current"

    @property
    def pointer_epoch(self) -> str:
        """STRING (integer): bumped on every pointer move (promote, rollback), so a server can
        tell "set to the same version again" from "unchanged" and retry a version it refused."""
        return f"{self.prefix}model:epoch"

    def model_events_channel(self, db: int) -> str:
        """PUB/SUB channel: the new current version is published here on promote/rollback.
        Channels are global to a Redis server, so the name carries the database number too;
        a message is only a hint (servers re-read `current_version` from their own database)."""
        return f"{self.prefix}model:events:db{int(db)}"

    @property
    def model_events(self) -> str:
        """The model-events channel of database 0 (kept for callers that predate per-database
        channels); use `registry.pointer.events_channel(client, keys)`, which reads the client's db."""
        return self.model_events_channel(0)

    def server(self, server_id: str) -> str:
        """STRING (JSON, expires after 3 heartbeats): a live serving process's heartbeat:
        server_id, host, started, model_version served, pointer_version, fallback, refused_reason."""
        return f"{self.prefix}servers:{server_id}"

    @property
    def servers(self) -> str:
        """ZSET: server_id -> time of its last heartbeat (stale members are pruned on read)."""
        return f"{self.prefix}servers"

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
