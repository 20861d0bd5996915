"""Smoke run of benchmarks/ppo_speed.py on the tiny model (the project's sides; TRL needs its own venv)."""

from __future__ import annotations

import json

import pytest

from benchmarks import ppo_speed


@pytest.mark.slow
def test_ppo_speed_smoke(tiny_model_dir, tmp_path):
    result = ppo_speed.main(["--models", "builtin", "--builtin-dir", str(tiny_model_dir), "--episodes", "16",
                             "--batch", "8", "--tokens", "8", "--sides", "ours-full,ours-lora", "--no-swap",
                             "--out", str(tmp_path)])
    sides = result["models"]["builtin"]["sides"]
    for side in ("ours-full", "ours-lora"):
        assert sides[side]["samples_per_s"] > 0 and sides[side]["peak_rss_mb"] > 0, sides[side]
    assert result["models"]["builtin"]["ratios"]["lora_over_full_peak_rss"] > 0
    assert json.loads((tmp_path / "result.json").read_text())["config"]["episodes"] == 16
    assert (tmp_path / "speed.png").is_file()
