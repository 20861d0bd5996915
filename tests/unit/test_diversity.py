"""The diversity floor: distinct-n and the repeat shares on token ids, the dual-ascent step on the penalty's weight,
and a PPO round whose policy collapses onto a toy reward keeping its diversity when the floor is set."""

import pytest
import torch

from tests.unit.test_ppo_trainer import PROMPTS, VowelReward, config, setup, tiny_gpt2  # noqa: F401 (fixture)
from training.config import PPOConfig
from training.diversity import DiversityFloor, floor_coef_step, repeat_shares, token_distinct_n
from training.ppo_trainer import run_ppo


def naive_distinct(responses: list[list[int]], n: int) -> float:
    grams = [tuple(r[i : i + n]) for r in responses for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def test_token_distinct_n_counts_only_the_masked_responses_like_a_naive_reference():
    tokens = torch.tensor([[5, 6, 5, 6, 9], [5, 6, 7, 0, 0], [8, 0, 0, 0, 0]])  # (B, T) padded after each response
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    responses = [[5, 6, 5, 6, 9], [5, 6, 7], [8]]
    for n in (1, 2, 3):
        assert token_distinct_n(tokens, mask, n) == pytest.approx(naive_distinct(responses, n))
    assert token_distinct_n(tokens, mask, 2) == pytest.approx(4 / 6)  # (5,6) x3, (6,5), (6,9), (6,7)
    assert token_distinct_n(tokens[2:], mask[2:], 2) == 0.0  # no response has two tokens


def test_repeat_shares_penalise_each_bigram_by_how_many_others_repeat_it():
    """p_t = (c - 1) / c at the token ending a bigram found c times in the batch, against a plain-Python count;
    their sum is the batch's bigrams minus its distinct bigrams (the distinct-2 deficit)."""
    tokens = torch.tensor([[5, 6, 5, 6, 9], [5, 6, 7, 0, 0], [8, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    responses = [[5, 6, 5, 6, 9], [5, 6, 7], [8]]
    grams = [tuple(r[i : i + 2]) for r in responses for i in range(len(r) - 1)]
    want = torch.zeros(3, 5)
    for b, r in enumerate(responses):
        for t in range(1, len(r)):
            c = grams.count((r[t - 1], r[t]))
            want[b, t] = (c - 1) / c
    got = repeat_shares(tokens, mask, 2)
    assert torch.allclose(got, want)
    assert got[0, 1] == pytest.approx(2 / 3) and got[0, 4] == 0.0 and got[2].sum() == 0.0  # (5,6) x3; (6,9) once
    assert float(got.sum()) == pytest.approx(len(grams) - len(set(grams)))


def test_the_penalty_weight_rises_below_the_floor_falls_above_it_and_stays_within_its_bounds():
    assert floor_coef_step(0.0, ratio=0.5, floor=0.7, lr=1.0, max_coef=1.0) == pytest.approx(0.2)
    assert floor_coef_step(0.2, ratio=0.9, floor=0.7, lr=1.0, max_coef=1.0) == pytest.approx(0.0)
    assert floor_coef_step(0.0, ratio=0.9, floor=0.7, lr=1.0, max_coef=1.0) == 0.0  # never negative
    assert floor_coef_step(0.9, ratio=0.1, floor=0.7, lr=1.0, max_coef=1.0) == 1.0  # capped
    off = DiversityFloor(floor=None, reference_distinct=None, lr=1.0, max_coef=1.0)
    assert off.update(0.1) is None and off.value == 0.0  # no floor: no penalty
    held = DiversityFloor(floor=0.7, reference_distinct=0.5, lr=1.0, max_coef=1.0)
    assert held.update(0.25) == pytest.approx(0.5) and held.value == pytest.approx(0.2)
    with pytest.raises(ValueError, match="reference"):
        DiversityFloor(floor=0.7, reference_distinct=0.0, lr=1.0, max_coef=1.0)


@pytest.mark.parametrize("bad", [dict(diversity_floor=0.0), dict(diversity_floor=1.5), dict(diversity_lr=-1.0),
                                 dict(repeat_coef_max=-0.1)])
def test_bad_diversity_settings_are_refused(bad):
    with pytest.raises(ValueError):
        PPOConfig(**bad)


def test_a_collapsing_round_keeps_its_diversity_with_the_floor(setup):  # noqa: F811 (the fixture)
    """The toy vowel reward collapses the policy's responses (distinct-2 of the rollouts falls to ~0.3 by step 12).
    With a floor of 0.9, the run is the same as without one until a batch first falls below it; then the repeat
    penalty's weight rises (each step's logged lambda is the dual step from the logged ratio) and the batches recover."""
    tok, policy_dir = setup
    rm = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    floor = dict(diversity_floor=0.9, diversity_lr=5.0, repeat_coef_max=5.0)
    _, free = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(steps=12), log=lambda s: None)
    _, held = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(steps=12, **floor), log=lambda s: None)

    assert all("repeat_coef" not in h and "distinct_2_ratio" not in h for h in free)
    first = next(i for i, h in enumerate(held) if h["repeat_coef"] > 0)
    assert first > 0 and held[first]["distinct_2_ratio"] < 0.9 and held[first]["repeat_penalty"] > 0
    for a, b in zip(free[:first + 1], held[:first + 1]):  # identical until the penalty first shapes an update
        assert a["mean_reward"] == b["mean_reward"] and a["distinct_2"] == b["distinct_2"]
    coef = 0.0
    for h in held:
        coef = floor_coef_step(coef, h["distinct_2_ratio"], 0.9, 5.0, 5.0)
        assert h["repeat_coef"] == pytest.approx(coef)
    assert max(h["repeat_coef"] for h in held) <= 5.0
    assert free[-1]["distinct_2"] < 0.5 and held[-1]["distinct_2"] > free[-1]["distinct_2"] + 0.3
