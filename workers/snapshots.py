"""Feedback stream -> immutable training-set files, with a consumer group.

A snapshot reads what the group has not yet acknowledged (entries left pending by a crashed round
first, then new ones), writes them to `<registry>/datasets/feedback-<first>-<last>.jsonl`
atomically, and only then XACKs them. A crash before the write loses nothing (the entries stay
pending and the next snapshot claims them); a crash between write and ack re-writes the same
entries, and the training set is de-duplicated by feedback_id, so nothing counts twice.

After the ack the stream is trimmed to the newest `feedback_stream_keep` entries, never past the
oldest entry the consumer group has not acknowledged (pending) or not yet read: the dataset files
are the durable log, the stream a bounded buffer.

Loading a training set applies the feedback hygiene (README "Feedback hygiene"): one vote per
(user, response) and per (user, response pair), the latest one; each user's items weighted by
their reliability as a voter (training/voters.py); no user above `max_user_share` of the weight.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from rlhf.v1 import records_pb2
from rlhf_core.feedback_log import event_to_row
from rlhf_core.keys import Keys
from rlhf_core.settings import load_settings
from training.records import PreferencePair, Rating
from training.voters import Vote, cap_scale, reliability
from workers import metrics

CONSUMER = "snapshot"


@dataclass
class Snapshot:
    path: str | None
    count: int
    first_id: str
    last_id: str
    trimmed: int = 0


@dataclass(frozen=True)
class Hygiene:
    """How a training set is weighted (from Settings; see rlhf_core/settings.py)."""

    max_user_share: float = 0.2
    voter_weighting: bool = True

    @classmethod
    def from_settings(cls, settings) -> "Hygiene":
        return cls(max_user_share=settings.max_user_share, voter_weighting=settings.voter_weighting)


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


def take_snapshot(r: redis.Redis, keys: Keys, datasets_dir: Path, limit: int = 100_000,
                  keep: int | None = None) -> Snapshot:
    """Moves unacknowledged feedback into a new training-set file; acks after the file is durable,
    then trims the stream (keep: entries to keep; None: the feedback_stream_keep setting)."""
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
    _fsync_dir(datasets_dir)
    r.xack(keys.feedback_stream, keys.consumer_group, *[eid for eid, _ in entries])
    keep = load_settings().feedback_stream_keep if keep is None else keep
    trimmed = trim_stream(r, keys, keep)
    return Snapshot(path=str(path), count=len(entries), first_id=first, last_id=last, trimmed=trimmed)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is durable
    finally:
        os.close(fd)


def trim_stream(r: redis.Redis, keys: Keys, keep: int) -> int:
    """Deletes the oldest entries beyond the newest `keep`, but only ones the group has read and
    acknowledged (i.e. saved in a dataset file). Returns how many were deleted. keep < 0: none."""
    if keep < 0:
        return 0
    group = next((g for g in r.xinfo_groups(keys.feedback_stream)
                  if g["name"].decode() == keys.consumer_group), None)
    if group is None:
        return 0
    ms, _, seq = group["last-delivered-id"].decode().partition("-")
    min_id = (int(ms), int(seq or 0) + 1)  # everything before it has been read
    pending = r.xpending(keys.feedback_stream, keys.consumer_group)
    if pending["pending"]:
        min_id = min(min_id, _stream_order(_text(pending["min"])))  # never past an unacknowledged entry
    if keep > 0:
        newest = r.xrevrange(keys.feedback_stream, count=keep)
        if len(newest) < keep:
            return 0
        min_id = min(min_id, _stream_order(newest[-1][0].decode()))
    return int(r.xtrim(keys.feedback_stream, minid=f"{min_id[0]}-{min_id[1]}", approximate=False))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_training_set(datasets_dir: Path, window: int, hygiene: Hygiene | None = None
                      ) -> tuple[list[PreferencePair], list[Rating], dict]:
    """The newest `window` votes over every snapshot: de-duplicated by feedback_id, the latest vote per
    (user, response) / (user, response pair), weighted per user (hygiene; None: from the settings)."""
    hygiene = hygiene or Hygiene.from_settings(load_settings())
    rows: dict[str, dict] = {}
    for path in sorted(Path(datasets_dir).glob("feedback-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["feedback_id"]] = row
    ordered = sorted(rows.values(), key=lambda row: _stream_order(row["feedback_id"]))
    latest = latest_votes(ordered)
    superseded = len(ordered) - len(latest)
    latest = latest[-window:] if window > 0 else []
    weight, stats = user_weights(latest, hygiene)
    pairs = [PreferencePair(row["prompt"], row["chosen"], row["rejected"], weight=weight[_user(row)],
                            user_id=_user(row)) for row in latest if "chosen" in row]
    ratings = [Rating(row["prompt"], row["response"], bool(row["thumbs_up"]), user_id=_user(row),
                      weight=weight[_user(row)]) for row in latest if "response" in row]
    info = {"first_feedback_id": latest[0]["feedback_id"] if latest else "",
            "last_feedback_id": latest[-1]["feedback_id"] if latest else "",
            "num_comparisons": len(pairs), "num_ratings": len(ratings),
            "num_prompts": len({row["prompt"] for row in latest}), "superseded_votes": superseded, **stats}
    metrics.observe_hygiene(info)
    return pairs, ratings, info


def save_training_set(path: Path, pairs: list[PreferencePair], ratings: list[Rating]) -> None:
    """Writes a loaded training set (after hygiene) to `path` atomically: the round's later stages
    read it back (read_training_set) instead of loading every snapshot again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pairs": [asdict(p) for p in pairs], "ratings": [asdict(r) for r in ratings]}),
                   encoding="utf-8")
    os.replace(tmp, path)


def read_training_set(path: Path) -> tuple[list[PreferencePair], list[Rating]]:
    """(pairs, ratings) as save_training_set wrote them."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [PreferencePair(**p) for p in data["pairs"]], [Rating(**r) for r in data["ratings"]]


def _user(row: dict) -> str:
    return row.get("user_id", "")


def _vote_key(row: dict) -> tuple:
    """What one user votes on once: a response (rating) or an unordered pair of responses (comparison)."""
    if "chosen" in row:
        ends = (row.get("response_id") or _digest(row["prompt"], row["chosen"]),
                row.get("rejected_response_id") or _digest(row["prompt"], row["rejected"]))
        return "comparison", _user(row), tuple(sorted(ends))
    return "rating", _user(row), row.get("response_id") or _digest(row["prompt"], row["response"])


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def latest_votes(ordered: list[dict]) -> list[dict]:
    """Rows in stream order keeping only each (user, item)'s latest vote (the stream stays the log)."""
    last = {_vote_key(row): row["feedback_id"] for row in ordered}
    return [row for row in ordered if last[_vote_key(row)] == row["feedback_id"]]


def _crowd_vote(row: dict) -> Vote:
    """The row as a vote on an item other users can vote on too: thumbs on a prompt, or an ordered pair."""
    if "chosen" in row:
        first, second = sorted((row["chosen"], row["rejected"]))
        return Vote(_user(row), "\x00".join(("pair", row["prompt"], first, second)),
                    1.0 if row["chosen"] == first else -1.0)
    return Vote(_user(row), "\x00".join(("thumbs", row["prompt"])), 1.0 if row["thumbs_up"] else -1.0)


def user_weights(rows: list[dict], hygiene: Hygiene) -> tuple[dict[str, float], dict]:
    """Per-user item weight = reliability x cap scale, and what was done (for the round's record)."""
    users = Counter(_user(row) for row in rows)
    trust = reliability([_crowd_vote(row) for row in rows]) if hygiene.voter_weighting else {}
    trust = {u: trust.get(u, 1.0) for u in users}
    scale = cap_scale({u: trust[u] * n for u, n in users.items()}, hygiene.max_user_share)
    weight = {u: trust[u] * scale[u] for u in users}
    stats = {"num_users": len(users), "downweighted_users": sum(t < 1.0 for t in trust.values()),
             "capped_users": sum(s < 1.0 for s in scale.values()),
             "min_user_weight": min(weight.values(), default=1.0)}
    return weight, stats


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
