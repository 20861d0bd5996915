"""The feedback log's shared pieces: the atomic append script and the JSONL interchange format.

JSONL rows (one object a line; `rlhf-serve feedback export` writes them, `import` reads them):
    comparison: {"prompt", "chosen", "rejected", "chosen_model_version", "rejected_model_version", ...}
    rating:     {"prompt", "response", "thumbs_up", "model_version", ...}
Optional on both: "user_id", "comment", "feedback_id", "created_at" (RFC 3339).
"""

from __future__ import annotations

import hashlib
import json

from google.protobuf.timestamp_pb2 import Timestamp

from rlhf.v1 import records_pb2

Kind = records_pb2.FeedbackEvent.Kind

# KEYS[1] stream, KEYS[2] idempotency key (or "" for none); ARGV: ttl, kind, event bytes.
# Returns {feedback_id, duplicate}. The stream entry id is the feedback_id.
APPEND_SCRIPT = """
if KEYS[2] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {seen, 1} end
end
local id = redis.call('XADD', KEYS[1], '*', 'kind', ARGV[2], 'event', ARGV[3])
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], id, 'EX', tonumber(ARGV[1])) end
return {id, 0}
"""


def event_to_row(feedback_id: str, event: records_pb2.FeedbackEvent) -> dict:
    row: dict = {"feedback_id": feedback_id, "prompt": event.prompt}
    if event.kind == Kind.KIND_COMPARISON:
        row.update(chosen=event.response, rejected=event.rejected_response,
                   chosen_model_version=event.model_version, rejected_model_version=event.rejected_model_version)
    else:
        row.update(response=event.response, thumbs_up=event.kind == Kind.KIND_THUMBS_UP,
                   model_version=event.model_version)
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
                                      comment=str(row.get("comment", "")), source="import")
    if "chosen" in row or "rejected" in row:
        if not row.get("chosen") or not row.get("rejected"):
            raise ValueError("a comparison needs non-empty 'chosen' and 'rejected'")
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
