"""Hand-computed and reference checks of the PPO math in training/ppo.py."""

import math

import torch

from training.ppo import (clipped_policy_loss, clipped_value_loss, entropy_from_logits, gae, kl_penalised_rewards,
                          logprobs_from_logits, masked_mean, masked_whiten)


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.225, 0.25, 0.3], [0.5, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0], [1.5, 2.0, 0.0]]))


def naive_gae(rewards, values, lengths, gamma, lam):
    """Per-sequence python loop over the unpadded tokens."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = lengths[b]
        running = 0.0
        for t in reversed(range(n)):
            next_v = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv


def test_gae_matches_naive_loop_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [9, 1, 4, 7, 2, 9]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths], dtype=torch.float64)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.7)]:
        adv, ret = gae(rewards, values, mask, gamma, lam)
        expected = naive_gae(rewards, values, lengths, gamma, lam)
        torch.testing.assert_close(adv, expected)
        torch.testing.assert_close(ret, (expected + values) * mask)


def test_kl_penalty_zero_when_policy_equals_reference():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    logprobs = logprobs_from_logits(logits, tokens)
    score = torch.tensor([1.5, -2.0, 0.25])
    rewards, kl = kl_penalised_rewards(score, logprobs, logprobs.clone(), mask, kl_coef=0.3)
    assert torch.count_nonzero(kl) == 0
    expected = torch.zeros(3, 5)
    expected[0, 4], expected[1, 1], expected[2, 0] = 1.5, -2.0, 0.25
    torch.testing.assert_close(rewards, expected)


def test_kl_penalty_hand_computed():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0]), logprobs, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1 + 2.0, 0.0]]))


def test_clipped_policy_loss_hand_computed():
    ratios = torch.tensor([[2.0, 0.5, 1.1, 0.5, 3.0]])
    old = torch.tensor([[-1.0, -2.0, -0.3, -0.7, -0.1]])
    new = old + ratios.log()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clipfrac, approxkl = clipped_policy_loss(new, old, adv, mask, cliprange=0.2)
    # max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 1.1, 0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 0.5 + 1.1 + 0.8) / 4))
    torch.testing.assert_close(clipfrac, torch.tensor(0.5))
    logs = [math.log(r) for r in (2.0, 0.5, 1.1, 0.5)]
    torch.testing.assert_close(approxkl, torch.tensor(0.5 * sum(x * x for x in logs) / 4))


def test_clipped_value_loss_hand_computed():
    values, old, returns = torch.tensor([[1.5, 1.1]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 1.0]])
    loss, vf_clipfrac = clipped_value_loss(values, old, returns, torch.tensor([[1, 1]]), cliprange_value=0.2)
    # token 0: max(0.25, (1.2-2)^2=0.64); token 1: max(0.01, 0.01)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.64 + 0.01) / 2))
    torch.testing.assert_close(vf_clipfrac, torch.tensor(0.5))


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = masked_whiten(x, mask)
    assert torch.all(w[mask == 0] == 0)
    torch.testing.assert_close(masked_mean(w, mask), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(w[mask == 1].std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    kept = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(masked_mean(kept, mask), torch.tensor(3.0), atol=1e-5, rtol=0)


def test_entropy_of_uniform_and_logprobs():
    logits = torch.zeros(2, 3, 8)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(8)))
    torch.testing.assert_close(logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long)),
                               torch.full((2, 3), -math.log(8)))
