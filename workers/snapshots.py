"""Feedback stream -> immutable training-set files, with a consumer group.

A snapshot reads what the group has not yet acknowledged (entries left pending by a crashed round
first, then new ones), writes them to `<registry>/datasets/feedback-<first>-<last>.jsonl`
atomically, and only then XACKs them. A crash before the write loses nothing (the entries stay
pending and the next snapshot claims them); a crash between write and ack re-writes the same
entries, and the training set is de-duplicated by feedback_id, so nothing counts twice.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from rlhf.v1 import records_pb2
from rlhf_serve.feedback_log import event_to_row
from rlhf_serve.keys import Keys
from training.records import PreferencePair, Rating

CONSUMER = "snapshot"


@dataclass
class Snapshot:
    path: str | None
    count: int
    first_id: str
    last_id: str


def ensure_group(r: redis.Redis, keys: Keys) -> None:
    try:
        r.xgroup_create(keys.feedback_stream, keys.consumer_group, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def backlog(r: redis.Redis, keys: Keys) -> int:
    """Stream entries not yet safely in a training set (undelivered + pending)."""
    ensure_group(r, keys)
    for group in r.xinfo_groups(keys.feedback_stream):
        if group["name"].decode() == keys.consumer_group:
            lag = group.get("lag")
            if lag is None:  # Redis could not compute it (deleted entries): count after last-delivered id
                last = group["last-delivered-id"].decode()
                lag = len(r.xrange(keys.feedback_stream, min=f"({last}", max="+"))
            return int(lag) + int(group["pending"])
    return r.xlen(keys.feedback_stream)


def _read_all(r: redis.Redis, keys: Keys, limit: int) -> list[tuple[str, bytes]]:
    entries: list[tuple[str, bytes]] = []
    for start in ("0", ">"):  # "0": our pending entries (a crashed snapshot); ">": new ones
        while len(entries) < limit:
            got = r.xreadgroup(keys.consumer_group, CONSUMER, {keys.feedback_stream: start},
                               count=min(1000, limit - len(entries)))
            batch = got[0][1] if got else []
            batch = [(eid.decode(), f[b"event"]) for eid, f in batch if f]
            if not batch:
                break
            entries.extend(batch)
            if start == "0":
                break  # pending list is read in one go (bounded by limit)
    return entries


def take_snapshot(r: redis.Redis, keys: Keys, datasets_dir: Path, limit: int = 100_000) -> Snapshot:
    """Moves unacknowledged feedback into a new training-set file; acks after the file is durable."""
    ensure_group(r, keys)
    entries = _read_all(r, keys, limit)
    if not entries:
        return Snapshot(path=None, count=0, first_id="", last_id="")
    datasets_dir.mkdir(parents=True, exist_ok=True)
    first, last = entries[0][0], entries[-1][0]
    path = datasets_dir / f"feedback-{first}-{last}.jsonl"
    rows = [event_to_row(eid, records_pb2.FeedbackEvent.FromString(raw)) for eid, raw in entries]
    fd, tmp = tempfile.mkstemp(dir=datasets_dir, prefix=".snapshot-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    r.xack(keys.feedback_stream, keys.consumer_group, *[eid for eid, _ in entries])
    return Snapshot(path=str(path), count=len(entries), first_id=first, last_id=last)


def load_training_set(datasets_dir: Path, window: int) -> tuple[list[PreferencePair], list[Rating], dict]:
    """The newest `window` feedback items over every snapshot, de-duplicated by feedback_id."""
    rows: dict[str, dict] = {}
    for path in sorted(Path(datasets_dir).glob("feedback-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["feedback_id"]] = row
    ordered = sorted(rows.values(), key=lambda row: _stream_order(row["feedback_id"]))[-window:]
    pairs = [PreferencePair(row["prompt"], row["chosen"], row["rejected"]) for row in ordered if "chosen" in row]
    ratings = [Rating(row["prompt"], row["response"], bool(row["thumbs_up"])) for row in ordered if "response" in row]
    info = {"first_feedback_id": ordered[0]["feedback_id"] if ordered else "",
            "last_feedback_id": ordered[-1]["feedback_id"] if ordered else "",
            "num_comparisons": len(pairs), "num_ratings": len(ratings),
            "num_prompts": len({row["prompt"] for row in ordered})}
    return pairs, ratings, info


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
