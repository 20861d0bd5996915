"""Feedback export/import round trips, through rlhf_serve.feedback_io and through the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import redis

from rlhf.v1 import policy_pb2
from rlhf_serve import feedback_io
from rlhf_core.keys import Keys
from tests.helpers import ServingStack, delete_prefix, unique_prefix

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    """A server with one comparison and two ratings in its feedback stream."""
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-fio"), tiny_model_dir, metrics_port=-1)
    pol = s.server.policy
    resp = pol.Generate(policy_pb2.GenerateRequest(prompt="Export me.", num_candidates=3, user_id="eve",
                                                   sampling=policy_pb2.SamplingParams(max_new_tokens=6)), timeout=60)
    a, b, c = resp.candidates
    pol.SubmitFeedback(policy_pb2.FeedbackRequest(comparison=policy_pb2.Comparison(
        chosen_response_id=a.response_id, rejected_response_id=b.response_id), user_id="eve", comment="a is better"))
    pol.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id=c.response_id, thumbs_up=True),
                                                  user_id="eve"))
    pol.SubmitFeedback(policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id=b.response_id,
                                                                           thumbs_up=False), user_id="eve"))
    s.candidates = (a, b, c)
    yield s
    s.close()


@pytest.fixture
def fresh_prefix(redis_url):
    prefix = unique_prefix()
    yield prefix
    delete_prefix(redis_url, prefix)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in ("feedback_id", "source")} for r in rows]


def export_rows(r, prefix):
    buf = io.StringIO()
    n = feedback_io.export_jsonl(r, Keys(prefix), buf)
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert n == len(rows)
    return rows


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "rlhf_serve.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_export_rows(stack):
    a, b, c = stack.candidates
    rows = export_rows(stack.redis, stack.settings.key_prefix)
    assert len(rows) == 3
    comp, up, down = rows
    assert comp["prompt"] == "Export me." and comp["chosen"] == a.text and comp["rejected"] == b.text
    assert comp["chosen_model_version"] == comp["rejected_model_version"] == "v0001"
    assert comp["user_id"] == "eve" and comp["comment"] == "a is better" and comp["source"] == "api"
    assert up["response"] == c.text and up["thumbs_up"] is True and up["model_version"] == "v0001"
    assert down["response"] == b.text and down["thumbs_up"] is False
    assert all(r["feedback_id"] and r["created_at"] for r in rows)


def test_round_trip_via_module(stack, fresh_prefix, tmp_path):
    rows = export_rows(stack.redis, stack.settings.key_prefix)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    r = stack.redis
    events = feedback_io.parse_jsonl(io.StringIO(text))
    assert feedback_io.import_events(r, Keys(fresh_prefix), events, 3600, 100) == (3, 0)
    again = export_rows(r, fresh_prefix)
    assert strip(again) == strip(rows)
    assert {x["source"] for x in again} == {"import"}
    # the same file a second time stores nothing new
    assert feedback_io.import_events(r, Keys(fresh_prefix), feedback_io.parse_jsonl(io.StringIO(text)), 3600,
                                     100) == (0, 3)
    assert len(export_rows(r, fresh_prefix)) == 3
    assert r.llen(Keys(fresh_prefix).recent_prompts) == 3


def test_round_trip_via_cli(stack, fresh_prefix, tmp_path, redis_url):
    out = tmp_path / "fb.jsonl"
    proc = cli("feedback", "export", "-o", str(out), "--redis-url", redis_url, "--key-prefix",
               stack.settings.key_prefix)
    assert "exported 3" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert strip(rows) == strip(export_rows(stack.redis, stack.settings.key_prefix))
    proc = cli("feedback", "import", str(out), "--redis-url", redis_url, "--key-prefix", fresh_prefix)
    assert "imported 3" in proc.stderr
    proc = cli("feedback", "import", str(out), "--redis-url", redis_url, "--key-prefix", fresh_prefix)
    assert "imported 0" in proc.stderr and "3 already present" in proc.stderr
    out2 = tmp_path / "fb2.jsonl"
    cli("feedback", "export", "-o", str(out2), "--redis-url", redis_url, "--key-prefix", fresh_prefix)
    rows2 = [json.loads(line) for line in out2.read_text().splitlines()]
    assert strip(rows2) == strip(rows)
    # export to stdout
    proc = cli("feedback", "export", "--redis-url", redis_url, "--key-prefix", fresh_prefix)
    assert strip([json.loads(line) for line in proc.stdout.splitlines()]) == strip(rows)


def test_malformed_file_imports_nothing(fresh_prefix, tmp_path, redis_url):
    good = {"prompt": "p", "response": "r", "thumbs_up": True, "model_version": "v0001"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(good), "{not json", json.dumps({"prompt": "p", "chosen": "x"}),
                              json.dumps({"prompt": "p", "response": "r", "thumbs_up": "yes"})]) + "\n")
    proc = cli("feedback", "import", str(bad), "--redis-url", redis_url, "--key-prefix", fresh_prefix, check=False)
    assert proc.returncode != 0
    assert "line 2" in proc.stderr and "line 3" in proc.stderr and "line 4" in proc.stderr
    assert "line 1:" not in proc.stderr
    assert "nothing imported" in proc.stderr
    r = redis.Redis.from_url(redis_url)
    assert r.xlen(Keys(fresh_prefix).feedback_stream) == 0
    with pytest.raises(ValueError, match="line 2"):
        feedback_io.parse_jsonl(io.StringIO(bad.read_text()))
    missing = cli("feedback", "import", str(tmp_path / "nope.jsonl"), "--redis-url", redis_url, "--key-prefix",
                  fresh_prefix, check=False)
    assert missing.returncode != 0 and "nothing imported" in missing.stderr


def test_a_comparison_of_an_empty_response_round_trips():
    """A served response can be empty (EOS first); the API stores a comparison of it, so import takes it too."""
    row = {"prompt": "p", "chosen": "Sure, here it is.", "rejected": "", "user_id": "eve"}
    event = feedback_io.row_to_event(row)
    assert (event.response, event.rejected_response, event.user_id) == ("Sure, here it is.", "", "eve")
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        feedback_io.row_to_event({"prompt": "p", "chosen": "x"})
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        feedback_io.row_to_event({"prompt": "p", "chosen": "x", "rejected": None})
