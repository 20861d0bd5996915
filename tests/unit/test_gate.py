"""The promotion gate's pure statistics (training/gate.py) against naive references."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.gate import (GateFigures, GateThresholds, bootstrap_lower_bound, decide, distinct_n,
                           per_prompt_win_fractions, ratio, split_prompts, win_fraction)

scores = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=6)


def naive_win_fraction(cand, parent):
    wins = ties = 0
    for c in cand:
        for p in parent:
            if c > p:
                wins += 1
            elif c == p:
                ties += 1
    return (wins + ties / 2) / (len(cand) * len(parent))


@given(scores, scores)
def test_win_fraction_matches_naive_count(cand, parent):
    assert win_fraction(cand, parent) == pytest.approx(naive_win_fraction(cand, parent))
    assert win_fraction(cand, parent) + win_fraction(parent, cand) == pytest.approx(1.0)  # ties split evenly


def test_win_fraction_hand_computed():
    assert win_fraction([1.0, 3.0], [2.0, 2.0]) == 0.5
    assert win_fraction([2.0], [2.0]) == 0.5
    assert per_prompt_win_fractions([[5.0], [0.0, 1.0]], [[1.0], [1.0]]) == [1.0, 0.25]
    with pytest.raises(ValueError):
        per_prompt_win_fractions([[1.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError):
        win_fraction([], [1.0])


def naive_distinct(texts, n):
    seen, total = set(), 0
    for t in texts:
        w = t.lower().split()
        for i in range(len(w) - n + 1):
            seen.add(" ".join(w[i:i + n]))
            total += 1
    return len(seen) / total if total else 0.0


@given(st.lists(st.text(alphabet="ab c", max_size=12), max_size=6), st.integers(1, 3))
def test_distinct_n_matches_naive(texts, n):
    assert distinct_n(texts, n) == pytest.approx(naive_distinct(texts, n))


def test_distinct_n_hand_computed_and_collapse():
    assert distinct_n(["a b c", "a b d"], 2) == 3 / 4  # (a b) twice, (b c), (b d)
    assert distinct_n(["Sorry sorry SORRY sorry"], 2) == 1 / 3
    assert distinct_n(["one"], 2) == 0.0


def test_split_prompts_is_deterministic_stable_balanced_and_disjoint():
    prompts = [f"p{i}" for i in range(1000)]
    policy, judge = split_prompts(prompts, seed=3)
    assert policy | judge == set(prompts) and not policy & judge
    assert 450 <= len(judge) <= 550
    assert split_prompts(list(reversed(prompts)) + prompts, seed=3) == (policy, judge)  # order, repeats ignored
    more_policy, more_judge = split_prompts(prompts + [f"new {i}" for i in range(50)], seed=3)
    assert policy <= more_policy and judge <= more_judge  # a prompt keeps its side as feedback grows
    assert split_prompts(prompts, seed=4) != (policy, judge)


def test_split_prompts_never_leaves_a_side_empty_when_it_can_help_it():
    assert split_prompts(["only"], seed=0) == ({"only"}, set())
    for seed in range(20):
        policy, judge = split_prompts(["a", "b"], seed)
        assert len(policy) == 1 and len(judge) == 1


def test_bootstrap_lower_bound_properties():
    assert bootstrap_lower_bound([0.7] * 10, 0.9) == pytest.approx(0.7)
    assert math.isnan(bootstrap_lower_bound([], 0.9))
    rng = random.Random(1)
    values = [rng.random() for _ in range(30)]
    lo90, lo99 = bootstrap_lower_bound(values, 0.9, seed=2), bootstrap_lower_bound(values, 0.99, seed=2)
    assert lo99 < lo90 < sum(values) / len(values)
    assert bootstrap_lower_bound(values, 0.9, seed=2) == lo90  # seeded


def test_bootstrap_lower_bound_matches_normal_theory():
    rng = random.Random(0)
    values = [float(rng.random() < 0.7) for _ in range(400)]
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / len(values))
    normal = m - 1.2816 * sd / math.sqrt(len(values))  # one-sided 90% normal bound
    assert bootstrap_lower_bound(values, 0.9, n_boot=4000, seed=1) == pytest.approx(normal, abs=0.01)


def test_ratio():
    assert ratio(3.0, 2.0) == 1.5 and ratio(0.0, 0.0) == 1.0 and ratio(1.0, 0.0) == math.inf


GOOD = GateFigures(judge_accuracy=0.8, win_rate=0.7, win_rate_lower_bound=0.6, candidate_reward=1.0,
                   parent_reward=0.5, kl=2.0, candidate_eos_rate=0.95, parent_eos_rate=1.0,
                   candidate_mean_length=12.0, reference_mean_length=8.0, candidate_distinct_2=0.5,
                   reference_distinct_2=0.6)


def test_decide_promotes_a_clean_candidate_and_records_every_check():
    promoted, reason, results = decide(GOOD, GateThresholds())
    assert promoted and reason.startswith("all checks passed")
    assert [c.name for c in results] == ["judge_accuracy", "win_rate", "reward_gain", "kl", "eos_rate",
                                         "length_ratio", "distinct_2"]
    assert all(c.passed for c in results)


@pytest.mark.parametrize("change,first", [
    ({"judge_accuracy": 0.5}, "judge_accuracy"),
    ({"judge_accuracy": None}, "judge_accuracy"),
    ({"judge_accuracy": float("nan")}, "judge_accuracy"),
    ({"win_rate_lower_bound": 0.5}, "win_rate"),
    ({"candidate_reward": 0.5}, "reward_gain"),
    ({"kl": 10.5}, "kl"),
    ({"kl": float("nan")}, "kl"),
    ({"candidate_eos_rate": 0.85}, "eos_rate"),
    ({"candidate_mean_length": 25.0}, "length_ratio"),
    ({"candidate_mean_length": 2.0}, "length_ratio"),
    ({"candidate_distinct_2": 0.29}, "distinct_2"),
])
def test_decide_refuses_and_names_the_first_failing_check(change, first):
    promoted, reason, results = decide(replace(GOOD, **change), GateThresholds())
    assert not promoted and reason.startswith(first + ":")
    assert [c.name for c in results if not c.passed] == [first]


def test_reward_gain_and_kl_reasons_and_the_reward_margin():
    """(Was the test of workers.rounds.gate, the reward-and-KL-only gate kept for old callers, now removed.)"""
    assert decide(replace(GOOD, candidate_reward=1.0, parent_reward=0.5, kl=2.0), GateThresholds(kl_bound=10.0))[0]
    promoted, reason, _ = decide(replace(GOOD, candidate_reward=0.4, parent_reward=0.5), GateThresholds())
    assert not promoted and reason.startswith("reward_gain:") and "not above" in reason
    promoted, reason, _ = decide(replace(GOOD, kl=12.0), GateThresholds(kl_bound=10.0))
    assert not promoted and reason.startswith("kl:") and "exceeds the bound" in reason
    small_gain = replace(GOOD, candidate_reward=0.6, parent_reward=0.5, kl=1.0)
    assert decide(small_gain, GateThresholds())[0]
    assert not decide(small_gain, GateThresholds(min_reward_gain=0.2))[0]


def test_a_zero_judge_floor_disables_the_judge_check():
    assert decide(replace(GOOD, judge_accuracy=None), GateThresholds(min_judge_accuracy=0.0))[0]
    assert decide(replace(GOOD, judge_accuracy=0.3), GateThresholds(min_judge_accuracy=0.0))[0]


def test_reward_hacked_figures_fail_several_checks_and_the_reason_lists_them():
    hacked = replace(GOOD, win_rate=0.2, win_rate_lower_bound=0.1, candidate_reward=-2.0, candidate_eos_rate=0.0,
                     candidate_mean_length=64.0, candidate_distinct_2=0.05, kl=40.0)
    promoted, reason, results = decide(hacked, GateThresholds())
    assert not promoted and reason.startswith("win_rate:")
    assert "also failed: reward_gain, kl, eos_rate, length_ratio, distinct_2" in reason


def test_a_negative_margin_is_a_non_inferiority_test_that_still_asks_the_judge_to_prefer_the_candidate():
    t = GateThresholds(win_margin=-0.05)
    slightly_better = replace(GOOD, win_rate=0.54, win_rate_lower_bound=0.47)
    assert decide(slightly_better, GateThresholds())[0] is False  # not shown better at 90%
    assert decide(slightly_better, t)[0] is True  # shown at most 5 points worse, and preferred
    tied = replace(GOOD, win_rate=0.5, win_rate_lower_bound=0.46)
    promoted, reason, _ = decide(tied, t)
    assert not promoted and reason.startswith("win_rate:") and "the win rate itself is not above 0.5" in reason
    worse = replace(GOOD, win_rate=0.52, win_rate_lower_bound=0.44)
    assert decide(worse, t)[0] is False
    assert decide(tied, GateThresholds(win_margin=-0.05, min_win_rate=0.0))[0] is True  # 0: the point check off


@settings(max_examples=50)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_a_margin_is_never_easier_to_clear(lo, m1, m2):
    figures = replace(GOOD, win_rate_lower_bound=lo)
    small, large = sorted([m1, m2])
    if decide(figures, GateThresholds(win_margin=large))[0]:
        assert decide(figures, GateThresholds(win_margin=small))[0]


def test_policy_samples_summary_and_gate_figures_from_scores():
    import torch

    from training.config import GateSampling
    from training.gate_eval import PolicySamples, gate_figures, score_samples

    cand = PolicySamples(texts=[["a b", "a b"], ["c d e", "x"]], lengths=[[3, 3], [4, 2]],
                         has_eos=[[True, False], [True, True]], kl=[[1.0, 3.0], [2.0, 2.0]])
    s = cand.summary()
    assert s == {"mean_length": 3.0, "eos_rate": 0.75, "distinct_2": distinct_n(["a b", "a b", "c d e", "x"], 2),
                 "kl": 2.0, "n": 4.0}

    class LengthJudge:  # scores a text by its word count
        def score(self, items):
            return torch.tensor([float(len(t.split())) for _, t in items])

    judged = score_samples(LengthJudge(), ["p1", "p2"], cand)
    assert judged == [[2.0, 2.0], [3.0, 1.0]]
    parent = [[1.0, 2.0], [3.0, 3.0]]
    f = gate_figures(0.7, judged, parent, s, {**s, "eos_rate": 1.0}, {**s, "mean_length": 1.5, "distinct_2": 1.0},
                     GateSampling(seed=1))
    assert f.win_rate == pytest.approx((0.75 + 0.25) / 2) and f.win_rate_lower_bound <= f.win_rate
    assert f.candidate_reward == 2.0 and f.parent_reward == 2.25 and f.kl == 2.0
    assert f.parent_eos_rate == 1.0 and f.reference_mean_length == 1.5 and f.reference_distinct_2 == 1.0
