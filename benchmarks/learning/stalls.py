"""Why rounds were refused, across stored learning runs: ``python -m benchmarks.learning.stalls DIR [DIR ...]``.

Every refused round of every ``result.json`` under the given folders is put in one class, by what PPO did to the
policy it started from (its parent, the version served before the round):

- ``no update``: PPO trained on no batch (every rollout batch was over the round's KL budget, retries included),
  so the candidate is its parent re-sampled;
- ``pulled back``: the candidate's KL to the SFT reference is at least ``PULL_BACK_NATS`` below its parent's
  (the round moved the policy back towards SFT: what a tightened beta does to a parent near the KL budget);
- ``moved``: any other refused candidate.

A parent is "at the KL ceiling" when its KL to SFT is at least ``CEILING_SHARE`` of the gate's KL bound. Each
class reports how many rounds, how many of them started at the ceiling, and the gold annotator's mean win rate
of those candidates against their parent (the benchmark's own check; the gate never sees it). Prints a
Markdown table (with an ``all`` row per class when several folders are given); ``--json PATH`` writes the
figures too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

PULL_BACK_NATS = 1.5
CEILING_SHARE = 0.75
CLASSES = ("no update", "pulled back", "moved")


def classify(parent_kl: float, model: dict[str, Any]) -> str:
    """The class of one refused round from its parent's KL to SFT and the candidate's gate record."""
    if not model.get("ppo_kl"):
        return "no update"
    if model["kl_to_reference"] < parent_kl - PULL_BACK_NATS:
        return "pulled back"
    return "moved"


def refused_rounds(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per refused round of a run: class, parent and candidate KL, at the ceiling, gold vs parent."""
    rows = []
    rounds = result["rounds"]
    for parent, rec in zip(rounds, rounds[1:]):
        model = rec.get("model")
        if not model or model.get("promoted"):
            continue
        gold = rec.get("refused_gold", {}).get("win_rate_vs_parent")
        rows.append({"seed": result["config"].get("seed"), "round": rec["round"], "class": classify(parent["kl_to_sft"], model),
                     "parent_kl": parent["kl_to_sft"], "candidate_kl": model["kl_to_reference"],
                     "at_ceiling": parent["kl_to_sft"] >= CEILING_SHARE * model.get("kl_bound", 10.0),
                     "gold_vs_parent": gold})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class: rounds, rounds whose parent was at the ceiling, mean gold win rate vs the parent."""
    out = {}
    for cls in CLASSES:
        mine = [r for r in rows if r["class"] == cls]
        golds = [r["gold_vs_parent"] for r in mine if r["gold_vs_parent"] is not None]
        out[cls] = {"rounds": len(mine), "at_ceiling": sum(r["at_ceiling"] for r in mine),
                    "gold_vs_parent_mean": statistics.fmean(golds) if golds else None,
                    "gold_better": sum(g > 0.5 for g in golds)}
    return out


def table(per_dir: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| runs | class | refused rounds | parent at the KL ceiling | gold win rate vs parent (mean) "
             "| gold prefers the candidate |", "|---|---|---|---|---|---|"]
    for name, summary in per_dir.items():
        for cls, s in summary.items():
            gold = "-" if s["gold_vs_parent_mean"] is None else f"{s['gold_vs_parent_mean']:.3f}"
            lines.append(f"| {name} | {cls} | {s['rounds']} | {s['at_ceiling']} | {gold} | {s['gold_better']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning.stalls", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="folders holding seed-*/result.json (or a result.json)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and figures here")
    args = p.parse_args(argv)
    per_dir, all_rows = {}, {}
    for d in args.dirs:
        paths = [d] if d.is_file() else sorted(d.glob("seed-*/result.json")) or sorted(d.glob("result.json"))
        if not paths:
            p.error(f"{d}: no result.json there (nor in its seed-* folders)")
        rows = [row for path in paths for row in refused_rounds(json.loads(path.read_text()))]
        per_dir[str(d)], all_rows[str(d)] = summarise(rows), rows
    if len(per_dir) > 1:
        per_dir["all"] = summarise([row for rows in all_rows.values() for row in rows])
    print(table(per_dir), end="")
    if args.json:
        args.json.write_text(json.dumps({"pull_back_nats": PULL_BACK_NATS, "ceiling_share": CEILING_SHARE,
                                         "summary": per_dir, "rows": all_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
