"""The feedback stream is trimmed only behind what a snapshot durably saved and acknowledged; the
training set weights voters (real Redis, real snapshot files)."""

from __future__ import annotations

import json

import pytest
import redis

from rlhf.v1 import records_pb2
from rlhf_serve import feedback_io
from rlhf_core.keys import Keys
from tests.helpers import delete_prefix, unique_prefix
from workers import snapshots


@pytest.fixture
def keyed(redis_url):
    prefix = unique_prefix()
    r = redis.Redis.from_url(redis_url)
    yield r, Keys(prefix)
    delete_prefix(redis_url, prefix)
    r.close()


def add(r, keys, rows) -> None:
    events = [feedback_io.row_to_event(row) for row in rows]
    assert feedback_io.import_events(r, keys, events, 3600, 10)[0] == len(rows)


def ratings(n, start=0, user="u"):
    return [{"prompt": f"p{i}", "response": f"r{i}", "thumbs_up": True, "user_id": user} for i in range(start, start + n)]


def ids(r, keys):
    return [eid.decode() for eid, _ in r.xrange(keys.feedback_stream)]


def test_trim_never_passes_unacknowledged_or_unread_entries(keyed, tmp_path):
    r, keys = keyed
    add(r, keys, ratings(10))
    all_ids = ids(r, keys)
    snapshots.ensure_group(r, keys)
    # a snapshot that crashed after reading 4 entries: they are pending (read, not acknowledged)
    r.xreadgroup(keys.consumer_group, snapshots.CONSUMER, {keys.feedback_stream: ">"}, count=4)
    assert snapshots.trim_stream(r, keys, keep=0) == 0
    r.xack(keys.feedback_stream, keys.consumer_group, *all_ids[:2])
    assert snapshots.trim_stream(r, keys, keep=0) == 2  # only the acknowledged ones
    assert ids(r, keys) == all_ids[2:]
    # the next snapshot saves the pending and the unread entries, acks them, then trims to `keep`
    add(r, keys, ratings(3, start=10))
    snap = snapshots.take_snapshot(r, keys, tmp_path, keep=3)
    assert snap.count == 11 and snap.trimmed == 8
    assert len(ids(r, keys)) == 3
    saved = [json.loads(line)["feedback_id"] for line in open(snap.path, encoding="utf-8")]
    assert saved[:8] == all_ids[2:]  # everything trimmed is in the dataset file
    # new feedback arriving after a snapshot is never trimmed before it is saved
    add(r, keys, ratings(5, start=20))
    assert snapshots.trim_stream(r, keys, keep=0) == 3
    assert len(ids(r, keys)) == 5 and snapshots.backlog(r, keys) == 5
    assert snapshots.take_snapshot(r, keys, tmp_path, keep=-1).count == 5
    assert len(ids(r, keys)) == 5  # keep=-1: never trim


def test_round_weights_voters_and_caps_a_spammer(keyed, tmp_path):
    """Five users agree on shared prompts; a contrarian votes the other way; a spammer floods."""
    r, keys = keyed
    rows = []
    for i in range(12):
        for u in range(5):
            rows.append({"prompt": f"q{i}", "response": f"good answer {i} from {u}", "thumbs_up": True,
                         "user_id": f"honest{u}"})
        rows.append({"prompt": f"q{i}", "response": f"good answer {i} for contrarian", "thumbs_up": False,
                     "user_id": "contrarian"})
    rows += [{"prompt": f"q{i % 12}", "response": f"spam {i}", "thumbs_up": False, "user_id": "spammer"}
             for i in range(300)]
    add(r, keys, rows)
    snapshots.take_snapshot(r, keys, tmp_path)
    _, rated, info = snapshots.load_training_set(tmp_path, window=10_000,
                                                 hygiene=snapshots.Hygiene(max_user_share=0.2))
    weight = {x.user_id: x.weight for x in rated}
    total = {u: sum(x.weight for x in rated if x.user_id == u) for u in weight}
    assert all(weight[f"honest{u}"] == 1.0 for u in range(5))
    assert weight["contrarian"] < 0.2 and weight["spammer"] < 0.2
    assert total["spammer"] <= 0.2 * sum(total.values()) + 1e-9
    assert info["downweighted_users"] == 2 and info["num_users"] == 7
    # without hygiene the spammer would hold 300 / 372 of the training weight
    _, plain, _ = snapshots.load_training_set(tmp_path, window=10_000,
                                              hygiene=snapshots.Hygiene(max_user_share=1.0, voter_weighting=False))
    assert {x.weight for x in plain} == {1.0}
    assert sum(x.user_id == "spammer" for x in plain) == 300
