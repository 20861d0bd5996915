"""Plain feedback records and the conversion of thumbs ratings into preference pairs."""

from __future__ import annotations

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


def _group_by_prompt(ratings: list[Rating]) -> dict[str, tuple[list[str], list[str]]]:
    """prompt -> (up-rated responses, down-rated responses), first-seen order, no duplicates."""
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for r in ratings:
        ups, downs = groups.setdefault(r.prompt, ([], []))
        side = ups if r.thumbs_up else downs
        if r.response not in side:
            side.append(r.response)
    return groups


def pairs_from_ratings_with_stats(
    ratings: list[Rating], cross_prompt_weight: float = 0.5
) -> tuple[list[PreferencePair], PairingStats]:
    """Preference pairs from thumbs ratings, plus counts of how ratings were used.

    * Same prompt: every up-rated response is paired with every down-rated
      response to that prompt, weight 1 (a response rated both ways is skipped).
    * Unpartnered ratings (a prompt with only ups or only downs): the i-th
      unpartnered up-rated response is paired against the i-th unpartnered
      down-rated response of another prompt, cycling the shorter list so each
      such rating is used at least once, with weight ``cross_prompt_weight``
      (IMPLEMENTATION_DETAILS.md detail 3). Live thumbs feedback is sparse:
      most prompts get a single rating, so dropping them would discard most of
      the signal, yet a cross-prompt comparison is noisier (it also compares
      prompts), hence the lower weight. Each side is scored with its own
      prompt: ``rejected_prompt`` holds the down-rated response's prompt.
    * If there are no unpartnered ratings of the opposite sign, they are dropped
      and counted in ``stats.dropped``.
    """
    stats = PairingStats()
    pairs: list[PreferencePair] = []
    lone_up: list[tuple[str, str]] = []
    lone_down: list[tuple[str, str]] = []
    for prompt, (ups, downs) in _group_by_prompt(ratings).items():
        if ups and downs:
            for good in ups:
                for bad in downs:
                    if good != bad:
                        pairs.append(PreferencePair(prompt, good, bad, 1.0))
                        stats.same_prompt_pairs += 1
        else:
            lone_up += [(prompt, r) for r in ups]
            lone_down += [(prompt, r) for r in downs]
    stats.unpartnered_up, stats.unpartnered_down = len(lone_up), len(lone_down)
    if not lone_up or not lone_down:
        stats.dropped = len(lone_up) + len(lone_down)
        return pairs, stats
    for i in range(max(len(lone_up), len(lone_down))):
        up_prompt, good = lone_up[i % len(lone_up)]
        down_prompt, bad = lone_down[i % len(lone_down)]
        pairs.append(PreferencePair(up_prompt, good, bad, cross_prompt_weight, rejected_prompt=down_prompt))
        stats.cross_prompt_pairs += 1
    return pairs, stats


def pairs_from_ratings(ratings: list[Rating], cross_prompt_weight: float = 0.5) -> list[PreferencePair]:
    """Preference pairs from thumbs ratings; see :func:`pairs_from_ratings_with_stats`."""
    return pairs_from_ratings_with_stats(ratings, cross_prompt_weight)[0]

