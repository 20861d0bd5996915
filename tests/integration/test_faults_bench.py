"""Smoke version of benchmarks/faults.py: a few scenarios on its own redis-server, JSON written."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import fault_stack, faults


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs a redis-server binary (it starts its own)")
def test_faults_benchmark_smoke(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "tiny_model_dir", lambda: tiny_model_dir)
    out = tmp_path / "faults"
    faults.main(["--only", "fuzz", "redis_outage", "idempotency_squat", "--fuzz-cases", "40", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    scenarios = result["scenarios"]
    assert set(scenarios) == {"fuzz", "redis_outage", "idempotency_squat"}
    assert all("error" not in s for s in scenarios.values()), scenarios
    assert scenarios["fuzz"]["unknown_or_internal"] == 0 and scenarios["fuzz"]["serves_afterwards"]
    assert scenarios["redis_outage"]["acked_lost"] == 0 and scenarios["redis_outage"]["seconds_to_recover"] < 30
    assert result["targets"]["acked_feedback_lost"] == 0
    assert fault_stack.free_port() > 0
