"""The diversity floor: distinct-n on token ids, the dual-ascent step on the entropy bonus, and a PPO round
whose policy collapses onto a toy reward keeping its diversity when the floor is set."""

import pytest
import torch

from tests.unit.test_ppo_trainer import PROMPTS, VowelReward, config, setup, tiny_gpt2  # noqa: F401 (fixture)
from training.config import PPOConfig
from training.diversity import DiversityFloor, entropy_coef_step, token_distinct_n
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


def test_entropy_coef_rises_below_the_floor_falls_above_it_and_stays_within_its_bounds():
    assert entropy_coef_step(0.0, ratio=0.5, floor=0.7, lr=0.05, max_coef=0.02) == pytest.approx(0.01)
    assert entropy_coef_step(0.01, ratio=0.9, floor=0.7, lr=0.05, max_coef=0.02) == pytest.approx(0.0)
    assert entropy_coef_step(0.0, ratio=0.9, floor=0.7, lr=0.05, max_coef=0.02) == 0.0  # never negative
    assert entropy_coef_step(0.015, ratio=0.1, floor=0.7, lr=0.05, max_coef=0.02) == 0.02  # capped
    fixed = DiversityFloor(0.003, floor=None, reference_distinct=None, lr=0.05, max_coef=0.02)
    assert fixed.update(0.1) is None and fixed.value == 0.003  # no floor: the bonus stays ent_coef
    held = DiversityFloor(0.0, floor=0.7, reference_distinct=0.5, lr=0.05, max_coef=0.02)
    assert held.update(0.25) == pytest.approx(0.5) and held.value == pytest.approx(0.01)
    with pytest.raises(ValueError, match="reference"):
        DiversityFloor(0.0, floor=0.7, reference_distinct=0.0, lr=0.05, max_coef=0.02)


@pytest.mark.parametrize("bad", [dict(diversity_floor=0.0), dict(diversity_floor=1.5), dict(diversity_lr=-1.0),
                                 dict(ent_coef_max=-0.1)])
def test_bad_diversity_settings_are_refused(bad):
    with pytest.raises(ValueError):
        PPOConfig(**bad)


def test_a_collapsing_round_keeps_its_diversity_with_the_floor(setup):  # noqa: F811 (the fixture)
    """The toy vowel reward collapses the policy's responses (distinct-2 of the rollouts falls to ~0.3 by step 12).
    With a floor of 0.9, the run is the same as without one until a batch first falls below it; then the
    entropy bonus rises (each step's logged c_ent is the dual step from the logged ratio) and the batches recover."""
    tok, policy_dir = setup
    rm = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    floor = dict(diversity_floor=0.9, diversity_lr=0.5, ent_coef_max=0.5)
    _, free = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(steps=12), log=lambda s: None)
    _, held = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(steps=12, **floor), log=lambda s: None)

    assert all(h["ent_coef"] == 0.0 and "distinct_2_ratio" not in h for h in free)
    first = next(i for i, h in enumerate(held) if h["ent_coef"] > 0)
    assert first > 0 and held[first]["distinct_2_ratio"] < 0.9
    for a, b in zip(free[:first], held[:first]):  # identical until the floor binds
        assert a["mean_reward"] == b["mean_reward"] and a["distinct_2"] == b["distinct_2"]
    coef = 0.0
    for h in held:
        coef = entropy_coef_step(coef, h["distinct_2_ratio"], 0.9, 0.5, 0.5)
        assert h["ent_coef"] == pytest.approx(coef)
    assert max(h["ent_coef"] for h in held) <= 0.5
    assert free[-1]["distinct_2"] < 0.5 and held[-1]["distinct_2"] > free[-1]["distinct_2"] + 0.3
