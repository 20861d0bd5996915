"""Plain feedback records, their held-out split by prompt, and (optionally) thumbs ratings as pairs."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    rejected_prompt: str | None = None
    """Prompt the rejected response answered, when it differs from ``prompt`` (detail 3)."""
    user_id: str = ""
    """Who gave the comparison ("" when anonymous or unknown)."""

    @property
    def rejected_context(self) -> str:
        """The prompt to score ``rejected`` with."""
        return self.prompt if self.rejected_prompt is None else self.rejected_prompt


@dataclass(frozen=True)
class Rating:
    """A user's thumbs-up (True) or thumbs-down (False) on one response to a prompt."""

    prompt: str
    response: str
    thumbs_up: bool
    user_id: str = ""
    """Who rated (empty: unknown); used by feedback hygiene."""
    weight: float = 1.0
    """Weight of this rating in the pointwise reward loss (e.g. the voter's reliability)."""


@dataclass
class PairingStats:
    """How ratings were used by :func:`pairs_from_ratings_with_stats`."""

    same_prompt_pairs: int = 0
    cross_prompt_pairs: int = 0
    unpartnered_up: int = 0
    unpartnered_down: int = 0
    dropped: int = 0


def _group_by_prompt(ratings: list[Rating]) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """prompt -> (up-rated, down-rated) response -> weight, first-seen order, first rating's weight."""
    groups: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for r in ratings:
        ups, downs = groups.setdefault(r.prompt, ({}, {}))
        (ups if r.thumbs_up else downs).setdefault(r.response, r.weight)
    return groups


def pairs_from_ratings_with_stats(
    ratings: list[Rating], cross_prompt_weight: float = 0.0
) -> tuple[list[PreferencePair], PairingStats]:
    """Preference pairs from thumbs ratings, plus counts of how ratings were used.

    * Same prompt: every up-rated response is paired with every down-rated
      response to that prompt, weight 1 (a response rated both ways is skipped).
    * Unpartnered ratings (a prompt with only ups or only downs): when
      ``cross_prompt_weight`` > 0, the i-th unpartnered up-rated response is
      paired against the i-th unpartnered down-rated response of another prompt,
      cycling the shorter list, with weight ``cross_prompt_weight``
      (IMPLEMENTATION_DETAILS.md detail 3); ``rejected_prompt`` holds the
      down-rated response's prompt. Off by default: the reward model learns
      from ratings directly (``reward_model.pointwise_logistic_loss``), and a
      cross-prompt pair is a noisy comparison that also compares prompts.
    * Unpartnered ratings not paired are counted in ``stats.dropped``.

    A pair's weight is further multiplied by the mean weight of its two ratings.
    """
    stats = PairingStats()
    pairs: list[PreferencePair] = []
    lone_up: list[tuple[str, str, float]] = []
    lone_down: list[tuple[str, str, float]] = []
    for prompt, (ups, downs) in _group_by_prompt(ratings).items():
        if ups and downs:
            for good, w_good in ups.items():
                for bad, w_bad in downs.items():
                    if good != bad:
                        pairs.append(PreferencePair(prompt, good, bad, (w_good + w_bad) / 2))
                        stats.same_prompt_pairs += 1
        else:
            lone_up += [(prompt, r, w) for r, w in ups.items()]
            lone_down += [(prompt, r, w) for r, w in downs.items()]
    stats.unpartnered_up, stats.unpartnered_down = len(lone_up), len(lone_down)
    if not lone_up or not lone_down or cross_prompt_weight <= 0:
        stats.dropped = len(lone_up) + len(lone_down)
        return pairs, stats
    for i in range(max(len(lone_up), len(lone_down))):
        up_prompt, good, w_good = lone_up[i % len(lone_up)]
        down_prompt, bad, w_bad = lone_down[i % len(lone_down)]
        weight = cross_prompt_weight * (w_good + w_bad) / 2
        pairs.append(PreferencePair(up_prompt, good, bad, weight, rejected_prompt=down_prompt))
        stats.cross_prompt_pairs += 1
    return pairs, stats


def pairs_from_ratings(ratings: list[Rating], cross_prompt_weight: float = 0.0) -> list[PreferencePair]:
    """Preference pairs from thumbs ratings; see :func:`pairs_from_ratings_with_stats`."""
    return pairs_from_ratings_with_stats(ratings, cross_prompt_weight)[0]


def pair_prompts(pair: PreferencePair) -> set[str]:
    """Every prompt a pair's two sides are scored with."""
    return {pair.prompt, pair.rejected_context}


def split_by_prompt(pairs: list[PreferencePair], ratings: list[Rating], fraction: float, seed: int
                    ) -> tuple[list[PreferencePair], list[Rating], list[PreferencePair], list[Rating]]:
    """(train pairs, train ratings, held-out pairs, held-out ratings), split by prompt.

    Whole prompts are held out (shuffled with ``seed``) until about ``fraction`` of all items
    (pairs + ratings) are held out; never every prompt. A pair is held out when either of its
    prompts is, so nothing answering a held-out prompt is ever trained on.
    """
    counts: dict[str, int] = {}
    for prompt in [p.prompt for p in pairs] + [r.prompt for r in ratings]:
        counts[prompt] = counts.get(prompt, 0) + 1
    for pair in pairs:
        counts.setdefault(pair.rejected_context, 0)
    prompts = sorted(counts)
    random.Random(seed).shuffle(prompts)
    target = round((len(pairs) + len(ratings)) * fraction) if len(prompts) > 1 else 0
    held: set[str] = set()
    count = 0
    for prompt in prompts[:-1]:  # never hold out everything
        if count >= target:
            break
        held.add(prompt)
        count += counts[prompt]
    train_pairs = [p for p in pairs if not pair_prompts(p) & held]
    held_pairs = [p for p in pairs if pair_prompts(p) & held]
    train_ratings = [r for r in ratings if r.prompt not in held]
    held_ratings = [r for r in ratings if r.prompt in held]
    return train_pairs, train_ratings, held_pairs, held_ratings
