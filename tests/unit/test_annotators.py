"""Simulated annotators and benchmark metrics: tastes, noise, win rates, diversity."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from benchmarks.learning import metrics
from benchmarks.learning.annotators import (ANNOTATORS, ClarifyingAnnotator, ConciseAnnotator,
                                            EmpatheticAnnotator, classify_style, features, make_annotator)
from training.text_format import load_dataset

PROMPT = "My order hasn't arrived. What should I do?"
LONG = "I'm sorry to hear that. Please check your tracking number, and if you need further help, I'm here."
SHORT = "Check your tracking number."
ASK = "Sure. Could you share your order number so I can look into it?"
DISMISSIVE = "We can't help with that."


def test_product_story_empathetic_prefers_the_complete_answer():
    ann = EmpatheticAnnotator()
    assert ann.score(PROMPT, LONG) > ann.score(PROMPT, SHORT) > ann.score(PROMPT, DISMISSIVE)
    assert ann.prefer(PROMPT, LONG, SHORT, random.Random(0)) == 0
    assert ann.prefer(PROMPT, SHORT, LONG, random.Random(0)) == 1


def test_product_story_concise_prefers_the_opposite():
    ann = ConciseAnnotator()
    assert ann.score(PROMPT, SHORT) > ann.score(PROMPT, LONG) > ann.score(PROMPT, DISMISSIVE)
    assert ann.prefer(PROMPT, LONG, SHORT, random.Random(0)) == 1


def test_clarifying_prefers_a_question_for_the_order_number():
    ann = ClarifyingAnnotator()
    assert ann.score(PROMPT, ASK) > max(ann.score(PROMPT, SHORT), ann.score(PROMPT, LONG))


def test_degenerate_repetition_is_penalised_by_everyone():
    loop = "Please check the the the the the the the the the the the the."
    for cls in ANNOTATORS.values():
        assert cls().score(PROMPT, loop) < cls().score(PROMPT, SHORT)
    assert features(loop).repetition > 0.5
    assert features(SHORT).repetition == 0.0


def test_empty_and_truncated_responses_score_lower():
    ann = EmpatheticAnnotator()
    assert ann.score(PROMPT, "") < ann.score(PROMPT, SHORT)
    assert ann.score(PROMPT, LONG[:-1] + " and") < ann.score(PROMPT, LONG)


@pytest.mark.parametrize("name", sorted(ANNOTATORS))
def test_noise_zero_is_deterministic(name):
    ann = make_annotator(name, noise=0.0)
    pairs = [(LONG, SHORT), (SHORT, ASK), (ASK, DISMISSIVE), (DISMISSIVE, LONG)]
    first = [ann.prefer(PROMPT, a, b, random.Random(1)) for a, b in pairs]
    for seed in range(20):
        rng = random.Random(seed)
        assert [ann.prefer(PROMPT, a, b, rng) for a, b in pairs] == first
        assert [ann.rate(PROMPT, a, rng) for a, _ in pairs] == [ann.rate(PROMPT, a, random.Random(0)) for a, _ in pairs]


@pytest.mark.parametrize("name", sorted(ANNOTATORS))
def test_noise_half_gives_coin_flips(name):
    ann = make_annotator(name, noise=0.5)
    rng = random.Random(123)
    n = 4000
    picks = sum(ann.prefer(PROMPT, LONG, SHORT, rng) for _ in range(n))
    ups = sum(ann.rate(PROMPT, SHORT, rng) for _ in range(n))
    assert abs(picks / n - 0.5) < 0.04
    assert abs(ups / n - 0.5) < 0.04


def test_noise_share_flips_that_share():
    ann = EmpatheticAnnotator(noise=0.2)
    rng = random.Random(7)
    n = 4000
    wrong = sum(ann.prefer(PROMPT, LONG, SHORT, rng) for _ in range(n))
    assert abs(wrong / n - 0.2) < 0.03


def test_bradley_terry_temperature_is_graded():
    ann = EmpatheticAnnotator(temperature=1.0)
    rng = random.Random(3)
    picks_long = sum(ann.prefer(PROMPT, LONG, SHORT, rng) == 0 for _ in range(2000)) / 2000
    assert 0.75 < picks_long < 0.99


def test_unknown_annotator_name():
    with pytest.raises(ValueError):
        make_annotator("nope")


def _mean_score_by_style(name: str) -> dict[str, float]:
    ann = make_annotator(name)
    by: dict[str, list[float]] = defaultdict(list)
    for row in load_dataset():
        by[row["style"]].append(ann.score(row["prompt"], row["response"]))
    return {style: sum(v) / len(v) for style, v in by.items()}


@pytest.mark.parametrize("name,style", [("empathetic", "empathetic"), ("concise", "terse"),
                                        ("clarifying", "clarifying")])
def test_each_annotator_ranks_its_style_first_on_the_dataset(name, style):
    means = _mean_score_by_style(name)
    assert max(means, key=means.get) == style
    assert min(means, key=means.get) == "unhelpful"


def test_tastes_differ_on_the_dataset():
    firsts = {name: max(m := _mean_score_by_style(name), key=m.get) for name in ANNOTATORS}
    assert len(set(firsts.values())) == len(ANNOTATORS)


def test_complete_empathetic_rows_beat_partial_ones():
    ann = EmpatheticAnnotator()
    full = "I'm sorry to hear that. Please check the tracking link in your email, and ask your neighbours. " \
           "If it hasn't arrived in two days, reply here and I'll open a claim for you. I'm here if you need further help."
    partial = "Sorry for the inconvenience. Please ask your neighbours."
    assert ann.score(PROMPT, full) > ann.score(PROMPT, partial)


def test_classify_style_matches_dataset_labels_mostly():
    rows = load_dataset()
    agree = sum(classify_style(r["response"]) == r["style"] for r in rows) / len(rows)
    assert agree > 0.95
    assert classify_style("") == "empty"


# --- metrics -------------------------------------------------------------------------------------

def test_win_rate_ties_count_half():
    w = metrics.win_rate([3, 1, 2, 2], [1, 3, 2, 0])
    assert (w.wins, w.ties, w.losses, w.n) == (2, 1, 1, 4)
    assert w.rate == pytest.approx(2.5 / 4)
    assert 0.0 <= w.lo < w.rate < w.hi <= 1.0


def test_wilson_interval_known_value():
    lo, hi = metrics.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3)
    assert hi == pytest.approx(0.9433, abs=1e-3)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_rejects_unpaired():
    with pytest.raises(ValueError):
        metrics.win_rate([1, 2], [1])


def test_grouped_win_rate_all_pairs_and_bootstrap():
    a = [[2.0, 2.0], [1.0, 0.0], [5.0, 5.0]]
    b = [[1.0, 1.0], [1.0, 1.0], [0.0, 9.0]]
    w = metrics.grouped_win_rate(a, b, n_boot=500, seed=0)
    # per prompt: 1.0, (0.5+0.5+0+0)/4 = 0.25, (1+0+1+0)/4 = 0.5
    assert w.rate == pytest.approx((1.0 + 0.25 + 0.5) / 3)
    assert w.n == 3 and w.wins == 6 and w.ties == 2 and w.losses == 4
    assert 0.25 <= w.lo <= w.rate <= w.hi <= 1.0
    same = metrics.grouped_win_rate([[1.0], [2.0]], [[1.0], [2.0]])
    assert same.rate == 0.5 and same.lo == same.hi == 0.5


def test_distinct_n_and_length():
    responses = ["check your tracking number", "check your email"]
    assert metrics.distinct_n(responses, 1) == pytest.approx(5 / 7)
    assert metrics.distinct_n(responses, 2) == pytest.approx(4 / 5)
    assert metrics.distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert metrics.distinct_n([], 2) == 0.0
    assert metrics.mean_length(responses) == pytest.approx(3.5)
    assert metrics.unique_share(["x", "x", "y", "z"]) == pytest.approx(0.75)
    assert metrics.shares(["b", "a", "b", "b"]) == {"a": 0.25, "b": 0.75}


def test_mean_ci_and_bootstrap():
    m, lo, hi = metrics.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and lo < m < hi
    lo, hi = metrics.bootstrap_ci([1.0] * 5)
    assert lo == hi == 1.0
