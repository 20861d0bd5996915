"""Headline figures, target checks, plots (matplotlib, Agg) and REPORT.md of a learning-benchmark run.

Everything here works on the plain dict that :func:`benchmarks.learning.harness.run` returns
(plus the ``example`` the CLI adds), so a stored ``result.json`` can be re-rendered with
``python -m benchmarks.learning.report RESULT_JSON``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The issue's targets ("Prove that it learns").
WIN_TARGET = {"empathetic": 0.85, "concise": 0.70, "clarifying": 0.70}
WIN_TARGET_STRICT = {"empathetic": False, "concise": True, "clarifying": True}  # ">= 85%", "> 70%"
# Issue 9's targets for the empathetic annotator: thumbs only; 25% adversarial users plus a spammer.
THUMBS_ONLY_TARGET = 0.70
ADVERSARIAL_TARGET = 0.80
TIME_BUDGET_S = 30 * 60
KL_TARGET = 10.0
DISTINCT2_MIN_RATIO = 0.5
PLOTS = ("win_rate.png", "gold_vs_proxy.png", "kl.png", "diversity.png")


def feedback_mode(cfg: dict[str, Any]) -> str:
    """The simulated users' feedback mode in words."""
    parts = ["thumbs up/down only" if cfg.get("thumbs_only") else
             f"comparisons, {cfg.get('rating_share', 0):.0%} thumbs ratings"]
    parts.append(f"{cfg.get('users', 1)} users")
    if cfg.get("adversarial_fraction"):
        parts.append(f"{cfg['adversarial_fraction']:.0%} of them voting against the annotator")
    if cfg.get("spam_votes"):
        parts.append(f"a spammer repeating one opposite vote {cfg['spam_votes']} times per round")
    if cfg.get("feedback_temperature") is not None:
        parts.append(f"candidates sampled at temperature {cfg['feedback_temperature']:g}")
    return ", ".join(parts)


def _meets(value: float, threshold: float, strict: bool) -> bool:
    return value > threshold if strict else value >= threshold


def win_target(name: str, cfg: dict[str, Any]) -> tuple[float, bool]:
    """(threshold, strict) of the win-rate target of annotator ``name`` under the run's feedback mode."""
    if name == "empathetic" and (cfg.get("adversarial_fraction") or cfg.get("spam_votes")):
        return ADVERSARIAL_TARGET, False
    if name == "empathetic" and cfg.get("thumbs_only"):
        return THUMBS_ONLY_TARGET, False
    return WIN_TARGET.get(name, 0.70), WIN_TARGET_STRICT.get(name, True)


def headline(result: dict[str, Any], time_budget_s: float = TIME_BUDGET_S) -> dict[str, Any]:
    """Final figures of a run and whether each target is met."""
    rounds = result["rounds"]
    final, base = rounds[-1], rounds[0]
    name = result["annotator"]
    thr, strict = win_target(name, result.get("config", {}))
    reached = [r for r in rounds if _meets(r["win_rate"], thr, strict)]
    time_to_target = reached[0]["elapsed_s"] if reached else None
    trained = [r for r in rounds if "outcome" in r]
    ratio = final["distinct_2"] / final["sft_distinct_2"] if final["sft_distinct_2"] else 0.0
    targets = {
        "win_rate": {"value": final["win_rate"], "threshold": thr, "op": ">" if strict else ">=",
                     "met": _meets(final["win_rate"], thr, strict)},
        "wall_time": {"value": time_to_target, "threshold": time_budget_s, "op": "<=",
                      "met": time_to_target is not None and time_to_target <= time_budget_s,
                      "what": "seconds until the win-rate target was first reached"},
        "kl": {"value": final["kl_to_sft"], "threshold": KL_TARGET, "op": "<", "met": final["kl_to_sft"] < KL_TARGET},
        "distinct_2": {"value": ratio, "threshold": DISTINCT2_MIN_RATIO, "op": ">=",
                       "met": ratio >= DISTINCT2_MIN_RATIO, "what": "distinct-2 of the final version / SFT's"},
    }
    return {
        "annotator": name, "final_version": final["version"], "rounds_run": len(trained),
        "promoted_rounds": sum(1 for r in trained if r["outcome"]["new_version"]),
        "win_rate": final["win_rate"], "win_rate_lo": final["win_rate_lo"], "win_rate_hi": final["win_rate_hi"],
        "baseline_win_rate": base["win_rate"],
        "win_rate_fresh": final.get("win_rate_fresh"), "win_rate_fresh_lo": final.get("win_rate_fresh_lo"),
        "win_rate_fresh_hi": final.get("win_rate_fresh_hi"),
        "score_final": final["score_served"], "score_sft": final["score_sft"], "kl_to_sft": final["kl_to_sft"],
        "distinct_2": final["distinct_2"], "sft_distinct_2": final["sft_distinct_2"], "distinct_2_ratio": ratio,
        "mean_length": final["mean_length"], "sft_mean_length": final["sft_mean_length"],
        "length_ratio": final["mean_length"] / final["sft_mean_length"] if final["sft_mean_length"] else 0.0,
        "seed": result.get("config", {}).get("seed"),
        "styles_final": final["eval"]["served"]["styles"], "styles_sft": final["eval"]["sft"]["styles"],
        "time_to_target_s": time_to_target, "harness_wall_s": result["wall_s"],
        "total_wall_s": result.get("total_wall_s", result["wall_s"]),
        "targets": targets, "all_targets_met": all(t["met"] for t in targets.values()),
    }


# --- plots ------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_win_rate(plt, rounds: list[dict[str, Any]], name: str, target: float):
    """Win rate vs SFT with its 95% CI, per round."""
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 4))
    win = [r["win_rate"] for r in rounds]
    err = [[w - r["win_rate_lo"] for w, r in zip(win, rounds)], [r["win_rate_hi"] - w for w, r in zip(win, rounds)]]
    ax.errorbar(xs, win, yerr=err, marker="o", capsize=4, label="served version vs SFT (95% CI)")
    ax.axhline(target, color="tab:green", ls="--", label="target")
    ax.axhline(0.5, color="grey", ls=":", label="parity")
    ax.set(xlabel="round", ylabel="win rate (held-out prompts)", ylim=(0, 1.02),
           title=f"Win rate vs SFT ({name} annotator)")
    ax.set_xticks(xs)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _plot_gold_vs_proxy(plt, rounds: list[dict[str, Any]]):
    """Gold (annotator) score of the served version and SFT beside the round reward model's scores."""
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["score_served"] for r in rounds], marker="o", color="tab:blue", label="gold: served version")
    ax.plot(xs, [r["score_sft"] for r in rounds], ls="--", color="tab:blue", alpha=0.6, label="gold: SFT")
    ax.set(xlabel="round", ylabel="annotator (gold) score", title="Gold score vs reward-model (proxy) score")
    ax.set_xticks(xs)
    ax2 = ax.twinx()
    tr = [r for r in rounds if r.get("model")]
    if tr:
        ax2.plot([r["round"] for r in tr], [r["model"]["candidate_reward"] for r in tr], marker="s",
                 color="tab:orange", label="proxy: candidate (round RM)")
        ax2.plot([r["round"] for r in tr], [r["model"]["parent_reward"] for r in tr], marker="x", ls=":",
                 color="tab:orange", label="proxy: parent (round RM)")
    ax2.set_ylabel("reward-model score (gate, held-out)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=7)
    return fig


def _plot_kl(plt, rounds: list[dict[str, Any]]):
    """KL to SFT of the served version and of each round's candidate."""
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["kl_to_sft"] for r in rounds], marker="o", label="served version")
    tr = [r for r in rounds if r.get("model")]
    if tr:
        ax.plot([r["round"] for r in tr], [r["model"]["kl_to_reference"] for r in tr], marker="s", ls=":",
                label="round candidate")
    ax.axhline(KL_TARGET, color="tab:red", ls="--", label=f"target < {KL_TARGET:g} nats")
    ax.set(xlabel="round", ylabel="KL to SFT (nats / response)", title="KL divergence to the SFT reference")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    return fig


def _plot_diversity(plt, rounds: list[dict[str, Any]]):
    """Distinct-2 (with the collapse floor) and mean length of the served version and SFT."""
    xs = [r["round"] for r in rounds]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(xs, [r["distinct_2"] for r in rounds], marker="o", label="served")
    a1.plot(xs, [r["sft_distinct_2"] for r in rounds], ls="--", label="SFT")
    a1.plot(xs, [DISTINCT2_MIN_RATIO * r["sft_distinct_2"] for r in rounds], ls=":", color="tab:red",
            label="target floor (half of SFT)")
    a1.set(xlabel="round", ylabel="distinct-2", title="Diversity", ylim=(0, None))
    a1.set_xticks(xs)
    a1.legend(fontsize=8)
    a2.plot(xs, [r["mean_length"] for r in rounds], marker="o", label="served")
    a2.plot(xs, [r["sft_mean_length"] for r in rounds], ls="--", label="SFT")
    a2.set(xlabel="round", ylabel="mean words / response", title="Length", ylim=(0, None))
    a2.set_xticks(xs)
    a2.legend(fontsize=8)
    return fig


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The four per-round plots of a run (``PLOTS``); returns their paths."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds, name = result["rounds"], result["annotator"]
    figures = (_plot_win_rate(plt, rounds, name, win_target(name, result.get("config", {}))[0]),
               _plot_gold_vs_proxy(plt, rounds), _plot_kl(plt, rounds), _plot_diversity(plt, rounds))
    return [_save(plt, fig, out_dir / fname) for fig, fname in zip(figures, PLOTS)]


# --- Markdown ---------------------------------------------------------------------------------

def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def markdown(result: dict[str, Any], head: dict[str, Any]) -> str:
    """REPORT.md of a run: headline, per-round table, refused rounds, product story, plots, notes."""
    lines = (_headline_lines(result, head) + _round_lines(result["rounds"]) + _refused_lines(result["rounds"])
             + _story_lines(result.get("example")) + ["", "## Plots", ""] + [f"![{p}]({p})" for p in PLOTS]
             + _note_lines(result))
    return "\n".join(lines) + "\n"


def _headline_lines(result: dict[str, Any], head: dict[str, Any]) -> list[str]:
    cfg = result["config"]
    h, t = head, head["targets"]
    return [f"# Learning benchmark: {h['annotator']} annotator", "",
            f"`{result.get('command', 'python -m benchmarks.learning')}`", "",
            f"Annotator **{h['annotator']}**, label noise {cfg['noise']:g}, {h['rounds_run']} round(s) of "
            f"{cfg['feedback_per_round']} feedback items, evaluated on {result['rounds'][0]['eval']['n_prompts']} "
            f"held-out prompts x {cfg['eval_samples']} samples per side. Model: {result.get('model', '?')}"
            f"{' (weights sha256 ' + result['model_sha256'][:12] + '…)' if result.get('model_sha256') else ''}. "
            f"Feedback: {feedback_mode(cfg)}.",
            "", "## Headline", "",
            "| figure | value | target | |", "|---|---|---|---|",
            f"| win rate vs SFT (final, {h['final_version']}) | **{h['win_rate']:.3f}** "
            f"[{h['win_rate_lo']:.3f}, {h['win_rate_hi']:.3f}] | {t['win_rate']['op']} {t['win_rate']['threshold']:g} "
            f"| {_mark(t['win_rate']['met'])} |",
            *(["| win rate vs SFT on fresh prompts (never seen by the gate) | "
               f"{h['win_rate_fresh']:.3f} [{h['win_rate_fresh_lo']:.3f}, {h['win_rate_fresh_hi']:.3f}] | | |"]
              if h.get("win_rate_fresh") is not None else []),
            f"| time to reach the win-rate target | {_f(h['time_to_target_s'], '.0f')} s | <= "
            f"{t['wall_time']['threshold']:.0f} s | {_mark(t['wall_time']['met'])} |",
            f"| KL to SFT (nats / response) | {h['kl_to_sft']:.2f} | < {t['kl']['threshold']:g} | {_mark(t['kl']['met'])} |",
            f"| distinct-2 final / SFT | {h['distinct_2']:.3f} / {h['sft_distinct_2']:.3f} = {h['distinct_2_ratio']:.2f} "
            f"| >= {t['distinct_2']['threshold']:g} | {_mark(t['distinct_2']['met'])} |",
            f"| gold score final / SFT | {h['score_final']:.2f} / {h['score_sft']:.2f} | | |",
            f"| mean length (words) final / SFT | {h['mean_length']:.1f} / {h['sft_mean_length']:.1f} | | |",
            f"| rounds promoted / run | {h['promoted_rounds']} / {h['rounds_run']} | | |",
            f"| wall time (harness / total incl. stack start) | {h['harness_wall_s']:.0f} s / {h['total_wall_s']:.0f} s | | |",
            "", f"All targets met: **{'yes' if h['all_targets_met'] else 'no'}**.", "",
            "Style mix (classify_style) final: " + ", ".join(f"{k} {v:.0%}" for k, v in h["styles_final"].items())
            + "; SFT: " + ", ".join(f"{k} {v:.0%}" for k, v in h["styles_sft"].items()) + "."]


def _round_lines(rounds: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Per round", "",
             "| round | version | outcome | win rate [95% CI] | fresh prompts | gold served / SFT | RM acc "
             "| proxy cand / parent | KL to SFT | distinct-2 | length | round s | elapsed s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        m, o = r.get("model"), r.get("outcome")
        outcome = "baseline" if o is None else ("timed out" if o["timed_out"] else
                                               f"{o['candidate_version']} rejected" if o["rejected"] else
                                               f"{o['candidate_version']} promoted")
        lines.append(
            f"| {r['round']} | {r['version']} | {outcome} | {r['win_rate']:.3f} [{r['win_rate_lo']:.3f}, "
            f"{r['win_rate_hi']:.3f}] | {_f(r.get('win_rate_fresh'), '.3f')} | "
            f"{r['score_served']:.2f} / {r['score_sft']:.2f} | "
            f"{_f(m['reward_model_accuracy'], '.2f') if m else '-'} | "
            f"{(_f(m['candidate_reward']) + ' / ' + _f(m['parent_reward'])) if m else '-'} | {r['kl_to_sft']:.2f} | "
            f"{r['distinct_2']:.3f} | {r['mean_length']:.1f} | {r['wall_s']:.0f} | {r['elapsed_s']:.0f} |")
    return lines


def _refused_lines(rounds: list[dict[str, Any]]) -> list[str]:
    """The gate's reason for every refused round, and what the gold annotator says of those candidates."""
    lines: list[str] = []
    rejected = [r for r in rounds if r.get("model") and not r["model"]["promoted"]]
    if rejected:
        lines += ["", "Gate decisions of rejected rounds:", ""]
        lines += [f"- round {r['round']} ({r['model']['version']}): {r['model']['reason']}{_gold_note(r)}"
                  for r in rejected]
        judged = [r["refused_gold"] for r in rejected if "win_rate_vs_parent" in r.get("refused_gold", {})]
        if judged:
            better = sum(g["win_rate_vs_parent"] > 0.5 for g in judged)
            clearly = sum(g["win_rate_vs_parent_lo"] > 0.5 for g in judged)
            lines += ["", f"By the gold annotator (the benchmark's own check, same held-out prompts and seeds as "
                          f"the served version's evaluation), {better} of {len(judged)} refused candidates beat "
                          f"the parent they would have replaced on the point estimate, {clearly} with the 95% "
                          "CI's lower end above 0.5."]
    return lines


def _story_lines(ex: dict[str, Any] | None) -> list[str]:
    """The product-story prompt answered by SFT and by the final version."""
    lines: list[str] = []
    if ex:
        lines += ["", "## Product story", "", f"Prompt: **{ex['prompt']}**", "",
                  f"| | {ex['sft_version']} (SFT) | {ex['final_version']} (final) |", "|---|---|---|"]
        for i, (a, b) in enumerate(zip(ex["sft"], ex["final"])):
            lines.append(f"| sample {i + 1} | {_cell(a['text'])} (score {a['score']:.2f}) | "
                         f"{_cell(b['text'])} (score {b['score']:.2f}) |")
    return lines


def _note_lines(result: dict[str, Any]) -> list[str]:
    lines = ["", "## Notes", "",
              "- Win rate: every served sample against every SFT sample of the same held-out prompt under the "
              "annotator's gold score (ties half), averaged over prompts; the 95% CI bootstraps prompts.",
              "- KL to SFT: the promotion gate's KL(policy || SFT) of the served version, summed over response "
              "tokens and averaged over the gate's held-out prompts (measured by the worker at the PPO sampling "
              "temperature); 0 for the SFT version itself.",
              "- Proxy score: the round's reward model on the gate's held-out prompts (each round trains a new "
              "reward model, so proxy values of different rounds are on different scales).",
              "- Training settings passed to the worker: "
              + (", ".join(f"`{k}={v}`" for k, v in sorted(result.get("training", {}).items())) or "defaults") + "."]
    lines += [f"- {note}" for note in result.get("notes", [])]
    if result.get("worker_settings"):
        lines.append("- Effective worker round settings (defaults included): "
                     + ", ".join(f"`{k}={v}`" for k, v in result["worker_settings"].items()) + ".")
    return lines


def _gold_note(r: dict[str, Any]) -> str:
    """What the gold annotator says of a refused candidate (absent in results of earlier versions)."""
    g = r.get("refused_gold")
    if not g:
        return ""
    if "error" in g:
        return f" [gold: not measured, {g['error']}]"
    return (f" [gold: win rate vs parent {g['win_rate_vs_parent']:.3f} ({g['win_rate_vs_parent_lo']:.3f}-"
            f"{g['win_rate_vs_parent_hi']:.3f}), vs SFT {g['win_rate_vs_sft']:.3f}]")


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "\\|").replace("\n", " ")


def write(result: dict[str, Any], out_dir: Path, time_budget_s: float = TIME_BUDGET_S) -> dict[str, Any]:
    """result.json, the plots and REPORT.md into ``out_dir``; returns the headline."""
    out_dir.mkdir(parents=True, exist_ok=True)
    head = headline(result, time_budget_s)
    result["headline"] = head
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(result, out_dir)
    (out_dir / "REPORT.md").write_text(markdown(result, head))
    return head


def summary_markdown(heads: list[dict[str, Any]], command: str) -> str:
    """One table over several annotators (``--all-annotators``)."""
    lines = ["# Learning benchmark: all annotators", "", f"`{command}`", "",
             "| annotator | final | win rate [95% CI] | target | KL | distinct-2 ratio | time to target s "
             "| wall s | all met |", "|---|---|---|---|---|---|---|---|---|"]
    for h in heads:
        t = h["targets"]["win_rate"]
        lines.append(f"| [{h['annotator']}]({h['annotator']}/REPORT.md) | {h['final_version']} | {h['win_rate']:.3f} "
                     f"[{h['win_rate_lo']:.3f}, {h['win_rate_hi']:.3f}] | {t['op']} {t['threshold']:g} "
                     f"({_mark(t['met'])}) | {h['kl_to_sft']:.2f} | {h['distinct_2_ratio']:.2f} | "
                     f"{_f(h['time_to_target_s'], '.0f')} | {h['total_wall_s']:.0f} | "
                     f"{'yes' if h['all_targets_met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Re-render plots and REPORT.md from a stored result.json."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.learning.report RESULT_JSON", file=sys.stderr)
        return 2
    path = Path(args[0])
    result = json.loads(path.read_text())
    write(result, path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
