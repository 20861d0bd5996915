"""Several seeds of one learning-benchmark configuration: mean and spread of every headline
figure, per-seed curves, and "meets the target" only when every seed does.

``python -m benchmarks.learning --seeds N --out DIR`` writes each seed's run to ``DIR/seed-<s>/``
and then this module's :func:`write` aggregates every ``DIR/seed-*/result.json`` into
``DIR/aggregate.json``, ``DIR/seeds.png`` and ``DIR/REPORT.md``. Re-aggregate with
``python -m benchmarks.learning.seeds DIR`` (e.g. after running seeds as separate processes).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.learning import report

FIGURES = ("win_rate", "win_rate_lo", "win_rate_hi", "win_rate_fresh", "kl_to_sft", "distinct_2_ratio", "length_ratio",
           "time_to_target_s", "score_final", "promoted_rounds", "rounds_run", "total_wall_s")


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the non-None ``values`` (and how many were None)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0, "missing": len(values)}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs), "missing": len(values) - len(xs)}


def load(out_dir: Path) -> list[dict[str, Any]]:
    """Every ``seed-*/result.json`` under ``out_dir``, by seed."""
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("seed-*/result.json"))]
    return sorted(results, key=lambda r: r["config"]["seed"])


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed headlines, mean/spread of each figure, and targets met on every seed."""
    heads = [r.get("headline") or report.headline(r) for r in results]
    names = heads[0]["targets"].keys() if heads else []
    targets = {n: {"met_every_seed": all(h["targets"][n]["met"] for h in heads),
                   "met_seeds": sum(h["targets"][n]["met"] for h in heads),
                   "threshold": heads[0]["targets"][n]["threshold"], "op": heads[0]["targets"][n]["op"]}
               for n in names}
    return {"annotator": heads[0]["annotator"] if heads else None, "seeds": [h["seed"] for h in heads],
            "figures": {f: spread([h.get(f) for h in heads]) for f in FIGURES}, "targets": targets,
            "all_targets_met_every_seed": bool(heads) and all(h["all_targets_met"] for h in heads),
            "per_seed": heads, "command": results[0].get("command") if results else None,
            "runs": [{"seed": r["config"]["seed"], "command": r.get("command"), "model": r.get("model"),
                      "model_sha256": r.get("model_sha256")} for r in results],
            "feedback_mode": report.feedback_mode(results[0]["config"]) if results else None}


def plot(results: list[dict[str, Any]], out_dir: Path) -> Path:
    """seeds.png: win rate, distinct-2 / SFT and length / SFT over rounds, one line per seed."""
    plt = report._plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for res in results:
        rounds, seed = res["rounds"], res["config"]["seed"]
        xs = [r["round"] for r in rounds]
        axes[0].plot(xs, [r["win_rate"] for r in rounds], marker="o", label=f"seed {seed}")
        axes[1].plot(xs, [r["distinct_2"] / r["sft_distinct_2"] if r["sft_distinct_2"] else 0 for r in rounds],
                     marker="o", label=f"seed {seed}")
        axes[2].plot(xs, [r["mean_length"] / r["sft_mean_length"] if r["sft_mean_length"] else 0 for r in rounds],
                     marker="o", label=f"seed {seed}")
    if results:
        thr = report.win_target(results[0]["annotator"], results[0]["config"])[0]
        axes[0].axhline(thr, color="tab:green", ls="--", label="target")
    axes[1].axhline(report.DISTINCT2_MIN_RATIO, color="tab:red", ls=":", label="floor (0.5x SFT)")
    axes[2].axhline(1.0, color="grey", ls=":", label="SFT")
    for ax, title, ylabel in ((axes[0], "Win rate vs SFT", "win rate"),
                              (axes[1], "Diversity", "distinct-2 / SFT's"),
                              (axes[2], "Length", "mean length / SFT's")):
        ax.set(xlabel="round", ylabel=ylabel, title=title, ylim=(0, None))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "seeds.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _ms(s: dict[str, Any], fmt: str = ".3f") -> str:
    if s["mean"] is None:
        return "-"
    text = f"{format(s['mean'], fmt)} ± {format(s['sd'], fmt)} ({format(s['min'], fmt)}–{format(s['max'], fmt)})"
    return text + (f", {s['missing']} seed(s) never" if s["missing"] else "")


def markdown(agg: dict[str, Any]) -> str:
    f, t = agg["figures"], agg["targets"]
    met = lambda n: f"{t[n]['met_seeds']}/{len(agg['seeds'])} seeds" + (" (met)" if t[n]["met_every_seed"] else " (NOT met)")
    lines = [f"# Learning benchmark: {agg['annotator']} annotator, {len(agg['seeds'])} seed(s)", "",
             f"`{agg['command']}`", "", f"Feedback: {agg['feedback_mode']}. Seeds {agg['seeds']}.",
             "Figures: mean ± sample sd (min–max) over seeds; a target is met only when every seed meets it.", "",
             "| figure | over seeds | target | |", "|---|---|---|---|",
             f"| win rate vs SFT (final) | **{_ms(f['win_rate'])}** | {t['win_rate']['op']} {t['win_rate']['threshold']:g} "
             f"| {met('win_rate')} |",
             f"| its 95% CI, lower / upper end | {_ms(f['win_rate_lo'])} / {_ms(f['win_rate_hi'])} | | |",
             *([f"| win rate vs SFT on fresh prompts (never seen by the gate) | {_ms(f['win_rate_fresh'])} | | |"]
               if f["win_rate_fresh"]["n"] else []),
             f"| KL to SFT (nats / response) | {_ms(f['kl_to_sft'], '.2f')} | < {t['kl']['threshold']:g} | {met('kl')} |",
             f"| distinct-2 / SFT's | {_ms(f['distinct_2_ratio'], '.2f')} | >= {t['distinct_2']['threshold']:g} "
             f"| {met('distinct_2')} |",
             f"| mean length / SFT's | {_ms(f['length_ratio'], '.2f')} | | |",
             f"| time to target (s) | {_ms(f['time_to_target_s'], '.0f')} | <= {t['wall_time']['threshold']:.0f} "
             f"| {met('wall_time')} |",
             f"| rounds promoted / run | {_ms(f['promoted_rounds'], '.1f')} / {_ms(f['rounds_run'], '.1f')} | | |",
             "", f"All targets met on every seed: **{'yes' if agg['all_targets_met_every_seed'] else 'no'}**.", "",
             "| seed | final | win rate [95% CI] | fresh prompts | KL | distinct-2 ratio | length ratio "
             "| time to target s | all met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h in agg["per_seed"]:
        tt = "-" if h["time_to_target_s"] is None else f"{h['time_to_target_s']:.0f}"
        lines.append(f"| [{h['seed']}](seed-{h['seed']}/REPORT.md) | {h['final_version']} | {h['win_rate']:.3f} "
                     f"[{h['win_rate_lo']:.3f}, {h['win_rate_hi']:.3f}] | {report._f(h.get('win_rate_fresh'))} | "
                     f"{h['kl_to_sft']:.2f} | "
                     f"{h['distinct_2_ratio']:.2f} | {h['length_ratio']:.2f} | {tt} | "
                     f"{'yes' if h['all_targets_met'] else 'no'} |")
    lines += ["", "![per-seed curves](seeds.png)", "", "Runs:", ""]
    lines += [f"- seed {r['seed']}: `{r['command']}` (model: {r['model']}{_digest(r)})" for r in agg.get("runs", [])]
    lines.append("")
    return "\n".join(lines)


def summary_markdown(aggs: list[dict[str, Any]], command: str) -> str:
    """One table over several annotators (``--all-annotators``), figures over seeds."""
    lines = ["# Learning benchmark: all annotators", "", f"`{command}`", "",
             "| annotator | seeds | win rate mean ± sd (min–max) | target | KL | distinct-2 ratio | length ratio "
             "| time to target s | met on every seed |", "|---|---|---|---|---|---|---|---|---|"]
    for a in aggs:
        f, t = a["figures"], a["targets"]["win_rate"]
        lines.append(f"| [{a['annotator']}]({a['annotator']}/REPORT.md) | {len(a['seeds'])} | {_ms(f['win_rate'])} | "
                     f"{t['op']} {t['threshold']:g} | {_ms(f['kl_to_sft'], '.2f')} | {_ms(f['distinct_2_ratio'], '.2f')} | "
                     f"{_ms(f['length_ratio'], '.2f')} | {_ms(f['time_to_target_s'], '.0f')} | "
                     f"{'yes' if a['all_targets_met_every_seed'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _digest(run: dict[str, Any]) -> str:
    """The start weights' sha256 (short), where the run recorded it."""
    return f", weights sha256 {run['model_sha256'][:12]}…" if run.get("model_sha256") else ""


def write(out_dir: Path) -> dict[str, Any]:
    """aggregate.json, seeds.png and REPORT.md of every seed run under ``out_dir``."""
    results = load(out_dir)
    agg = aggregate(results)
    (out_dir / "aggregate.json").write_text(json.dumps(agg, indent=1, default=str) + "\n")
    plot(results, out_dir)
    (out_dir / "REPORT.md").write_text(markdown(agg))
    return agg


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.learning.seeds OUT_DIR", file=sys.stderr)
        return 2
    agg = write(Path(args[0]))
    return 0 if agg["all_targets_met_every_seed"] else 1


if __name__ == "__main__":
    sys.exit(main())
