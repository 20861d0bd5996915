"""Pure metric functions of the learning benchmark: win rates with confidence intervals, diversity,
length. No I/O, no gRPC."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

from training.gate import distinct_n, words  # the gate's distinct-n and word unit: one measure for both

Z95 = 1.959963984540054


@dataclass(frozen=True)
class WinRate:
    """A win rate of A over B (ties count half) with a 95% interval [lo, hi] over ``n`` units."""

    rate: float
    lo: float
    hi: float
    n: int
    wins: float
    ties: float
    losses: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _outcome(a: float, b: float) -> float:
    """1 when a beats b, 0.5 on a tie, 0 on a loss."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; ``successes`` may be fractional (ties as half)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> WinRate:
    """Paired win rate: ``scores_a[i]`` against ``scores_b[i]``, ties as half, Wilson 95% CI."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"paired win rate needs equal lengths, got {len(scores_a)} and {len(scores_b)}")
    outcomes = [_outcome(a, b) for a, b in zip(scores_a, scores_b)]
    n = len(outcomes)
    wins = float(sum(o == 1.0 for o in outcomes))
    ties = float(sum(o == 0.5 for o in outcomes))
    succ = wins + 0.5 * ties
    lo, hi = wilson_interval(succ, n)
    return WinRate(succ / n if n else 0.5, lo, hi, n, wins, ties, n - wins - ties)


def group_win_fraction(a: Sequence[float], b: Sequence[float]) -> float:
    """Win fraction of every sample in ``a`` against every sample in ``b`` (ties half)."""
    if not a or not b:
        raise ValueError("each group needs at least one sample")
    return sum(_outcome(x, y) for x in a for y in b) / (len(a) * len(b))


def grouped_win_rate(groups_a: Sequence[Sequence[float]], groups_b: Sequence[Sequence[float]],
                     n_boot: int = 2000, seed: int = 0) -> WinRate:
    """Win rate of A over B with samples grouped by prompt.

    Per prompt, every A sample is compared with every B sample (ties half); the rate is the mean
    over prompts, and the 95% CI is a percentile bootstrap that resamples prompts (the unit that
    is independent), so correlated samples of one prompt do not narrow it.
    """
    if len(groups_a) != len(groups_b):
        raise ValueError("groups_a and groups_b must cover the same prompts")
    fracs = [group_win_fraction(a, b) for a, b in zip(groups_a, groups_b)]
    n = len(fracs)
    if n == 0:
        return WinRate(0.5, 0.0, 1.0, 0, 0.0, 0.0, 0.0)
    wins = float(sum(_outcome(x, y) == 1.0 for a, b in zip(groups_a, groups_b) for x in a for y in b))
    ties = float(sum(x == y for a, b in zip(groups_a, groups_b) for x in a for y in b))
    pairs = sum(len(a) * len(b) for a, b in zip(groups_a, groups_b))
    lo, hi = bootstrap_ci(fracs, n_boot=n_boot, seed=seed)
    return WinRate(sum(fracs) / n, lo, hi, n, wins, ties, pairs - wins - ties)


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    if not values:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    tail = (1.0 - level) / 2
    return means[int(tail * (n_boot - 1))], means[int(math.ceil((1 - tail) * (n_boot - 1)))]


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values."""
    return sum(values) / len(values) if values else 0.0


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, lo, hi) with a normal-approximation 95% interval."""
    n = len(values)
    m = mean(values)
    if n < 2:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return m, m - half, m + half


def mean_length(responses: Sequence[str]) -> float:
    """Mean response length in whitespace tokens."""
    return mean([len(words(r)) for r in responses])


def unique_share(responses: Sequence[str]) -> float:
    """Share of distinct response strings (1.0: all different; mode collapse drives it down)."""
    return len(set(responses)) / len(responses) if responses else 0.0


def shares(labels: Sequence[str]) -> dict[str, float]:
    """Relative frequency of each label, sorted by label."""
    counts = Counter(labels)
    total = sum(counts.values())
    return {k: counts[k] / total for k in sorted(counts)} if total else {}


def summarize_responses(responses: Sequence[str]) -> dict[str, float]:
    """Diversity and length of a set of responses."""
    return {
        "distinct_1": distinct_n(responses, 1),
        "distinct_2": distinct_n(responses, 2),
        "mean_length": mean_length(responses),
        "unique_share": unique_share(responses),
    }
