"""The promotion gate's statistics and decision, as small pure functions (no torch, no I/O).

The gate compares a candidate policy with its parent on held-out prompts, judged by a reward
model the candidate was *not* optimised against (cross-fitting: detail 22), and guards against
collapse and drift relative to the SFT reference (detail 23).

Win rates: per prompt, every candidate sample is compared with every parent sample (ties count
half); the rate is the mean over prompts. Prompts are the independent unit, so the bootstrap
resamples prompts (correlated samples of one prompt do not narrow the bound).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from training.config import GateThresholds
from training.diversity import distinct_share


def judge_side(prompt: str, seed: int) -> bool:
    """Whether ``prompt``'s feedback belongs to the judge's half (a seeded hash: stable as feedback grows)."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return bool(digest[0] & 1)


def split_prompts(prompts: Iterable[str], seed: int) -> tuple[set[str], set[str]]:
    """(policy_prompts, judge_prompts): the distinct prompts dealt by :func:`judge_side` (detail 22).

    A prompt keeps its side in every round with the same seed, so no policy in a lineage is ever
    trained on the judge's feedback. If one side would be empty while there are two or more
    prompts, the first (sorted) prompt of the other side moves over; a lone prompt goes to the
    policy (the judge then has nothing and the gate refuses: no held-out accuracy).
    """
    distinct = sorted(set(prompts))
    judge = [p for p in distinct if judge_side(p, seed)]
    policy = [p for p in distinct if not judge_side(p, seed)]
    if not policy and judge:
        policy.append(judge.pop(0))
    elif not judge and len(policy) > 1:
        judge.append(policy.pop(0))
    return set(policy), set(judge)


def outcome(a: float, b: float) -> float:
    """1 when ``a`` beats ``b``, 0.5 on a tie, 0 on a loss."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def win_fraction(candidate: Sequence[float], parent: Sequence[float]) -> float:
    """Share of (candidate sample, parent sample) pairs of one prompt the candidate wins (ties half)."""
    if not candidate or not parent:
        raise ValueError("each prompt needs at least one candidate and one parent sample")
    return sum(outcome(c, p) for c in candidate for p in parent) / (len(candidate) * len(parent))


def per_prompt_win_fractions(candidate: Sequence[Sequence[float]], parent: Sequence[Sequence[float]]) -> list[float]:
    """One :func:`win_fraction` per prompt; ``candidate[i]`` and ``parent[i]`` are prompt i's scores."""
    if len(candidate) != len(parent):
        raise ValueError(f"candidate has {len(candidate)} prompts, parent {len(parent)}")
    return [win_fraction(c, p) for c, p in zip(candidate, parent)]


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values."""
    return sum(values) / len(values) if values else float("nan")


def bootstrap_means(values: Sequence[float], n_boot: int, seed: int) -> list[float]:
    """Sorted means of ``n_boot`` resamples (with replacement, same size) of ``values``."""
    rng, n = random.Random(seed), len(values)
    return sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))


def bootstrap_lower_bound(values: Sequence[float], confidence: float, n_boot: int = 2000, seed: int = 0) -> float:
    """One-sided percentile-bootstrap lower bound of the mean: the (1 - confidence) quantile.

    NaN for no values. With ``confidence`` 0.9, the true mean is above the bound in about 90% of
    repetitions (percentile bootstrap, Efron & Tibshirani 1993 ch. 13).
    """
    if not values:
        return float("nan")
    means = bootstrap_means(values, n_boot, seed)
    return means[int(math.floor((1.0 - confidence) * (n_boot - 1)))]


def words(text: str) -> list[str]:
    """Whitespace tokens, lower-cased: the unit of distinct-n (as in benchmarks/learning)."""
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n of a set of responses: unique word n-grams / all word n-grams (0 when there are none)."""
    return distinct_share(map(words, texts), n)


def ratio(value: float, baseline: float) -> float:
    """value / baseline; 1 when both are 0, inf when only the baseline is 0."""
    if baseline == 0:
        return 1.0 if value == 0 else float("inf")
    return value / baseline


@dataclass(frozen=True)
class GateFigures:
    """What was measured: judge scores, win rate, KL, EOS rates, lengths, distinct-2 (detail 23)."""

    judge_accuracy: float | None
    win_rate: float
    win_rate_lower_bound: float
    candidate_reward: float
    parent_reward: float
    kl: float
    candidate_eos_rate: float
    parent_eos_rate: float
    candidate_mean_length: float
    reference_mean_length: float
    candidate_distinct_2: float
    reference_distinct_2: float


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed, the measured value, the threshold, a sentence."""

    name: str
    passed: bool
    value: float
    threshold: float
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def checks(f: GateFigures, t: GateThresholds) -> list[Check]:
    """Every check in the order the reason names them (the judge's trust first: it grades the rest)."""
    acc = f.judge_accuracy if _finite(f.judge_accuracy) else float("nan")
    need_win = 0.5 + t.win_margin  # the win rate's lower bound must exceed this
    bound_ok = f.win_rate_lower_bound > need_win
    point_ok = f.win_rate > t.min_win_rate  # binds with a negative margin (non-inferiority)
    gain = f.candidate_reward - f.parent_reward  # judge score gain over the parent
    eos_drop = f.parent_eos_rate - f.candidate_eos_rate  # fall of the EOS rate vs the parent
    length_ratio = ratio(f.candidate_mean_length, f.reference_mean_length)  # vs the SFT reference
    distinct_ratio = ratio(f.candidate_distinct_2, f.reference_distinct_2)  # vs the SFT reference
    ok = {"judge_accuracy": (_finite(acc) and acc >= t.min_judge_accuracy) or t.min_judge_accuracy <= 0,  # 0: off
          "win_rate": bound_ok and point_ok,
          "reward_gain": gain > t.min_reward_gain,
          "kl": f.kl <= t.kl_bound,
          "eos_rate": eos_drop <= t.max_eos_drop,
          "length_ratio": 1.0 / t.max_length_ratio <= length_ratio <= t.max_length_ratio,
          "distinct_2": distinct_ratio >= t.min_distinct_ratio}
    judge_msg = (f"judge held-out accuracy {acc:.3f} {'>=' if ok['judge_accuracy'] else 'is below the floor'} "
                 f"{t.min_judge_accuracy:g}") if _finite(acc) else "the judge has no held-out accuracy (too little feedback)"
    return [
        Check("judge_accuracy", ok["judge_accuracy"], acc, t.min_judge_accuracy, judge_msg),
        Check("win_rate", ok["win_rate"], f.win_rate_lower_bound, need_win,
              _win_message(f, t, need_win, bound_ok, point_ok)),
        Check("reward_gain", ok["reward_gain"], gain, t.min_reward_gain,
              f"judge reward {f.candidate_reward:.4f} {'>' if ok['reward_gain'] else 'is not above'} "
              f"the parent's {f.parent_reward:.4f} + margin {t.min_reward_gain:g}"),
        Check("kl", ok["kl"], f.kl, t.kl_bound,
              f"KL to the SFT reference {f.kl:.2f} {'<=' if ok['kl'] else 'exceeds the bound'} {t.kl_bound:.2f}"),
        Check("eos_rate", ok["eos_rate"], eos_drop, t.max_eos_drop,
              f"EOS rate {f.candidate_eos_rate:.2f} vs parent {f.parent_eos_rate:.2f}: drop {eos_drop:.2f} "
              f"{'<=' if ok['eos_rate'] else 'exceeds the limit'} {t.max_eos_drop:g}"),
        Check("length_ratio", ok["length_ratio"], length_ratio, t.max_length_ratio,
              f"mean length {f.candidate_mean_length:.1f} tokens = {length_ratio:.2f}x the SFT reference's "
              f"{f.reference_mean_length:.1f} ({'within' if ok['length_ratio'] else 'outside'} "
              f"1/{t.max_length_ratio:g}..{t.max_length_ratio:g}x)"),
        Check("distinct_2", ok["distinct_2"], distinct_ratio, t.min_distinct_ratio,
              f"distinct-2 {f.candidate_distinct_2:.3f} = {distinct_ratio:.2f}x the SFT reference's "
              f"{f.reference_distinct_2:.3f} ({'>=' if ok['distinct_2'] else 'below the floor'} "
              f"{t.min_distinct_ratio:g}x)"),
    ]


def _win_message(f: GateFigures, t: GateThresholds, need_win: float, bound_ok: bool, point_ok: bool) -> str:
    msg = (f"win rate vs parent {f.win_rate:.3f}, lower bound {f.win_rate_lower_bound:.3f} "
           f"{'>' if bound_ok else 'is not above'} {need_win:g}")
    if not point_ok:
        msg += f", and the win rate itself is not above {t.min_win_rate:g}"
    return msg


def decide(f: GateFigures, t: GateThresholds) -> tuple[bool, str, list[Check]]:
    """(promoted, reason, checks): promoted only if every check passes; the reason names the first failure."""
    results = checks(f, t)
    failed = [c for c in results if not c.passed]
    if not failed:
        return True, "all checks passed: " + "; ".join(c.message for c in results), results
    also = f" (also failed: {', '.join(c.name for c in failed[1:])})" if len(failed) > 1 else ""
    return False, f"{failed[0].name}: {failed[0].message}{also}", results
