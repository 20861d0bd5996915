"""``python -m benchmarks.learning.stalls``: every refused round of stored runs, by what PPO did to its parent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.learning import stalls

RUNS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tuning" / "amd-8-rounds" / "comparisons"


def test_classes() -> None:
    assert stalls.classify(8.9, {"ppo_kl": 0.0, "kl_to_reference": 8.5}) == "no update"
    assert stalls.classify(8.9, {"ppo_kl": 1.6, "kl_to_reference": 4.1}) == "pulled back"
    assert stalls.classify(8.9, {"ppo_kl": 7.0, "kl_to_reference": 7.5}) == "moved"  # within 1.5 nats
    assert stalls.classify(2.5, {"ppo_kl": 4.0, "kl_to_reference": 6.4}) == "moved"


def test_every_refused_round_of_stored_runs_is_counted_once(tmp_path: Path, capsys) -> None:
    results = [json.loads(p.read_text()) for p in sorted(RUNS.glob("seed-*/result.json"))]
    refused = [(r["config"]["seed"], rec["round"]) for r in results for rec in r["rounds"]
               if rec.get("model") and not rec["model"]["promoted"]]
    assert stalls.main([str(RUNS), "--json", str(tmp_path / "stalls.json")]) == 0
    out = json.loads((tmp_path / "stalls.json").read_text())
    rows = out["rows"][str(RUNS)]
    assert sorted((r["seed"], r["round"]) for r in rows) == sorted(refused)
    summary = out["summary"][str(RUNS)]
    assert sum(s["rounds"] for s in summary.values()) == len(refused)
    table = capsys.readouterr().out
    for cls, s in summary.items():
        assert f"| {RUNS} | {cls} | {s['rounds']} | {s['at_ceiling']} |" in table


def test_several_folders_add_up_to_the_all_rows(tmp_path: Path, capsys) -> None:
    thumbs = RUNS.parent / "thumbs-only"
    assert stalls.main([str(RUNS), str(thumbs), "--json", str(tmp_path / "stalls.json")]) == 0
    summary = json.loads((tmp_path / "stalls.json").read_text())["summary"]
    for cls in stalls.CLASSES:
        for key in ("rounds", "at_ceiling", "gold_better"):
            assert summary["all"][cls][key] == summary[str(RUNS)][cls][key] + summary[str(thumbs)][cls][key]
    assert f"| all | pulled back | {summary['all']['pulled back']['rounds']} |" in capsys.readouterr().out


def test_folder_without_results_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        stalls.main([str(tmp_path)])
    assert exc.value.code == 2
    assert "no result.json" in capsys.readouterr().err
