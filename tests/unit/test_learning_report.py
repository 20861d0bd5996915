"""A stored learning result re-renders (``python -m benchmarks.learning.report RESULT_JSON``): headline,
per-round rows, the refused rounds with the gate's reasons, and the four plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.learning import report

STORED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tuning" / "amd-8-rounds" / "comparisons" / "seed-2"


def test_stored_result_rerenders_report_and_plots(tmp_path: Path) -> None:
    shutil.copy(STORED / "result.json", tmp_path / "result.json")
    assert report.main([str(tmp_path / "result.json")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    rounds = result["rounds"]
    text = (tmp_path / "REPORT.md").read_text()

    final = rounds[-1]
    assert f"| win rate vs SFT (final, {final['version']}) | **{final['win_rate']:.3f}**" in text
    assert result["headline"]["win_rate"] == final["win_rate"]
    # one row per round, in order, each naming the version served after it
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [r["round"] for r in rounds]
    assert [r.split("|")[2].strip() for r in rows] == [r["version"] for r in rounds]
    # every refused round is listed with the gate's reason
    refused = [r for r in rounds if r.get("model") and not r["model"]["promoted"]]
    assert refused, "the stored run refused candidates"
    for r in refused:
        assert f"- round {r['round']} ({r['model']['version']}): {r['model']['reason']}" in text
    for name in report.PLOTS:
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"![{name}]({name})" in text


def test_report_cli_needs_one_argument(capsys) -> None:
    assert report.main([]) == 2
    assert "usage" in capsys.readouterr().err
