"""The feedback log's shared pieces: the atomic append script and the JSONL interchange format.

JSONL rows (one object a line; `rlhf-serve feedback export` writes them, `import` reads them):
    comparison: {"prompt", "chosen", "rejected", "chosen_model_version", "rejected_model_version", ...}
    rating:     {"prompt", "response", "thumbs_up", "model_version", ...}
Optional on both: "user_id", "comment", "feedback_id", "created_at" (RFC 3339), "response_id"
(comparison: also "rejected_response_id"; training keeps one vote per user and response id).
"""

from __future__ import annotations

import hashlib
import json

from google.protobuf.timestamp_pb2 import Timestamp

from rlhf.v1 import records_pb2

Kind = records_pb2.FeedbackEvent.Kind

# KEYS[1] stream, KEYS[2] idempotency key (or "" for none); ARGV: ttl, kind, event bytes, content digest.
# Returns {feedback_id, status}: status 0 stored, 1 duplicate (same key, same content), 2 conflict (same
# key, different content: nothing stored). The idempotency key holds "<feedback_id> <digest>"; a value
# without a digest (written before keys were bound to content) counts as a duplicate.
# The `#!lua` line makes Redis (>= 7) refuse the whole script up front when it is out of memory
# (maxmemory with noeviction), so a full Redis can never store the entry without its key.
APPEND_SCRIPT = """#!lua
if KEYS[2] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen then
    local sep = string.find(seen, ' ', 1, true)
    if not sep then return {seen, 1} end
    local id = string.sub(seen, 1, sep - 1)
    if string.sub(seen, sep + 1) == ARGV[4] then return {id, 1} end
    return {id, 2}
  end
end
local id = redis.call('XADD', KEYS[1], '*', 'kind', ARGV[2], 'event', ARGV[3])
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], id .. ' ' .. ARGV[4], 'EX', tonumber(ARGV[1])) end
return {id, 0}
"""
STORED, DUPLICATE, CONFLICT = 0, 1, 2

# A token bucket per subject (a HASH {tokens, ts}; Redis' own clock, so every server agrees).
# KEYS[1] bucket; ARGV: capacity (burst), refill per second, cost. Returns {allowed (0/1), retry_after_ms}.
RATE_LIMIT_SCRIPT = """#!lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]) or cap, tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate / 1000)
local allowed, retry = 0, 0
if tokens >= cost then
  tokens, allowed = tokens - cost, 1
else
  retry = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap * 1000 / rate) + 1000)
return {allowed, retry}
"""


def content_digest(event: records_pb2.FeedbackEvent) -> str:
    """What an idempotency key is bound to: the feedback's content (not its time or id)."""
    parts = (Kind.Name(event.kind), event.response_id, event.rejected_response_id, event.prompt, event.response,
             event.rejected_response, event.comment)
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def event_to_row(feedback_id: str, event: records_pb2.FeedbackEvent) -> dict:
    row: dict = {"feedback_id": feedback_id, "prompt": event.prompt}
    if event.kind == Kind.KIND_COMPARISON:
        row.update(chosen=event.response, rejected=event.rejected_response,
                   chosen_model_version=event.model_version, rejected_model_version=event.rejected_model_version)
    else:
        row.update(response=event.response, thumbs_up=event.kind == Kind.KIND_THUMBS_UP,
                   model_version=event.model_version)
    if event.response_id:
        row["response_id"] = event.response_id
    if event.rejected_response_id:
        row["rejected_response_id"] = event.rejected_response_id
    if event.user_id:
        row["user_id"] = event.user_id
    if event.comment:
        row["comment"] = event.comment
    if event.HasField("created_at"):
        row["created_at"] = event.created_at.ToJsonString()
    row["source"] = event.source
    return row


def row_to_event(row: dict) -> records_pb2.FeedbackEvent:
    """One JSONL object -> an event (source "import"). Raises ValueError saying what is wrong."""
    if not isinstance(row, dict) or not str(row.get("prompt", "")).strip():
        raise ValueError("needs a non-empty 'prompt'")
    event = records_pb2.FeedbackEvent(prompt=row["prompt"], user_id=str(row.get("user_id", "")),
                                      comment=str(row.get("comment", "")), source="import",
                                      response_id=str(row.get("response_id", "")),
                                      rejected_response_id=str(row.get("rejected_response_id", "")))
    if "chosen" in row or "rejected" in row:
        if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
            raise ValueError("a comparison needs 'chosen' and 'rejected' texts (\"\" for an empty response)")
        event.kind = Kind.KIND_COMPARISON
        event.response, event.rejected_response = row["chosen"], row["rejected"]
        event.model_version = str(row.get("chosen_model_version", ""))
        event.rejected_model_version = str(row.get("rejected_model_version", ""))
    elif "response" in row and isinstance(row.get("thumbs_up"), bool):
        event.kind = Kind.KIND_THUMBS_UP if row["thumbs_up"] else Kind.KIND_THUMBS_DOWN
        event.response = row["response"]
        event.model_version = str(row.get("model_version", ""))
    else:
        raise ValueError("needs either 'chosen' and 'rejected', or 'response' and a boolean 'thumbs_up'")
    ts = Timestamp()
    if row.get("created_at"):
        ts.FromJsonString(row["created_at"])
    else:
        ts.GetCurrentTime()
    event.created_at.CopyFrom(ts)
    content = json.dumps({k: row.get(k) for k in ("prompt", "chosen", "rejected", "response", "thumbs_up",
                                                   "user_id", "created_at")}, sort_keys=True)
    event.idempotency_key = "import:" + hashlib.sha256(content.encode()).hexdigest()[:40]
    return event
