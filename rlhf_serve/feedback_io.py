"""`rlhf-serve feedback export|import`: the feedback stream <-> JSONL."""

from __future__ import annotations

import json
from typing import IO, Iterator

import redis

from rlhf.v1 import records_pb2
from rlhf_core.feedback_log import APPEND_SCRIPT, STORED, content_digest, event_to_row, row_to_event
from rlhf_core.keys import Keys


def iter_events(r: redis.Redis, keys: Keys, start: str = "-", batch: int = 1000) -> Iterator[tuple[str, records_pb2.FeedbackEvent]]:
    """Every (feedback_id, event) in the stream, oldest first."""
    cursor = start
    while True:
        entries = r.xrange(keys.feedback_stream, min=cursor, max="+", count=batch)
        if cursor != "-" and entries and entries[0][0].decode() == cursor:
            entries = entries[1:]
        if not entries:
            return
        for entry_id, fields in entries:
            yield entry_id.decode(), records_pb2.FeedbackEvent.FromString(fields[b"event"])
        cursor = entries[-1][0].decode()


def export_jsonl(r: redis.Redis, keys: Keys, out: IO[str]) -> int:
    count = 0
    for feedback_id, event in iter_events(r, keys):
        out.write(json.dumps(event_to_row(feedback_id, event), ensure_ascii=False) + "\n")
        count += 1
    return count


def parse_jsonl(lines: IO[str]) -> list[records_pb2.FeedbackEvent]:
    """Parses every line first; raises ValueError naming each bad line (nothing is imported then)."""
    events, errors = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(row_to_event(json.loads(line)))
        except (ValueError, TypeError) as exc:
            errors.append(f"line {number}: {exc}")
    if errors:
        raise ValueError("; ".join(errors[:20]) + (f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""))
    return events


def import_events(r: redis.Redis, keys: Keys, events: list[records_pb2.FeedbackEvent], ttl_s: int,
                  recent_prompts: int) -> tuple[int, int]:
    """Appends events (each keyed by its content, so importing a file twice stores it once).

    Returns (imported, duplicates).
    """
    append = r.register_script(APPEND_SCRIPT)
    imported = duplicates = 0
    for event in events:
        kind = records_pb2.FeedbackEvent.Kind.Name(event.kind)
        _, status = append(keys=[keys.feedback_stream, keys.idempotency(event.user_id, event.idempotency_key)],
                           args=[ttl_s, kind, event.SerializeToString(), content_digest(event)])
        if status != STORED:  # the import key is derived from the content: a conflict is a duplicate too
            duplicates += 1
        else:
            imported += 1
            r.lpush(keys.recent_prompts, event.prompt)
    r.ltrim(keys.recent_prompts, 0, recent_prompts - 1)
    return imported, duplicates
