"""PPO-for-RLHF math as small pure functions on tensors.

Shapes: ``B`` responses, ``T`` response tokens (right-padded; ``mask`` is 1 on
real tokens, a contiguous prefix of each row), ``V`` vocabulary size. Symbols
follow Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE) and Ziegler et
al. 2019; "detail N" refers to training/IMPLEMENTATION_DETAILS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """(B, T) log pi(a_t|s_t) of ``tokens`` (B, T) under ``logits`` (B, T, V)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V) log pi(.|s_t)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """(B, T) entropy H(pi(.|s_t)) = logsumexp(z) - sum_a pi(a) z_a."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)  # (B, T, V) pi(.|s_t)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # (B, T)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all dims, or ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over masked positions (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)  # () mu
    var = masked_mean((x - mean) ** 2, mask)  # () biased sigma^2
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mu) / sigma over masked positions; keeps the mean if not ``shift_mean`` (detail 11)."""
    mean = masked_mean(x, mask)  # () mu
    var = masked_var(x, mask)  # () sigma^2
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(B, T) k1 estimate log pi(a|s) - log pi_ref(a|s) of KL(pi || pi_ref) at sampled tokens (detail 8)."""
    return (logprobs - ref_logprobs) * mask


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) index of the last 1 in each row of ``mask`` (0 for an all-zero row)."""
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    return (mask.long() * positions).argmax(-1)


def kl_penalised_rewards(
    score: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """Per-token rewards r_t = -beta * KL_t, plus the RM score at the last response token.

    Ziegler et al. 2019 eq. (R(x, y) = r(x, y) - beta log(pi/rho)); detail 8.
    Returns ``(rewards (B, T), kl (B, T))``.
    """
    kl = kl_per_token(logprobs, ref_logprobs, mask)  # (B, T) log pi - log pi_ref
    non_score_reward = -kl_coef * kl  # (B, T) -beta * KL_t
    last = last_token_index(mask)  # (B,) index of the EOS / final token
    score_reward = torch.zeros_like(non_score_reward)  # (B, T)
    score_reward[torch.arange(score.shape[0]), last] = score.to(score_reward.dtype)  # r(x, y) at t = last
    rewards = (non_score_reward + score_reward) * mask  # (B, T) r_t
    return rewards, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016 eq. 16; detail 10).

    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``, ``A_t = delta_t + gamma lam A_{t+1}``
    with ``V = 0`` past the last response token. Returns ``(advantages, returns)``,
    both (B, T), where ``returns = A + V`` are the value targets.
    """
    rewards = rewards * mask  # (B, T) r_t, 0 on padding
    values = values * mask  # (B, T) V(s_t), 0 on padding (terminal)
    T = rewards.shape[1]
    lastgaelam = torch.zeros_like(rewards[:, 0])  # (B,) A_{t+1}
    advantages_reversed = []
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t < T - 1 else torch.zeros_like(values[:, t])  # (B,) V(s_{t+1})
        delta = rewards[:, t] + gamma * next_values - values[:, t]  # (B,) TD error delta_t
        lastgaelam = delta + gamma * lam * lastgaelam  # (B,) A_t
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask  # (B, T) A_t
    returns = advantages + values  # (B, T) R_t = A_t + V(s_t)
    return advantages, returns


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017 eq. 7; detail 12).

    Returns ``(loss, clipfrac, approxkl)``; ``approxkl = 0.5 E[(log ratio)^2]`` (detail 17).
    """
    log_ratio = logprobs - old_logprobs  # (B, T) log pi_theta / pi_theta_old
    ratio = torch.exp(log_ratio)  # (B, T) rho_t
    pg_losses = -advantages * ratio  # (B, T) -A_t rho_t
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B, T)
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)  # () -L^CLIP
    clipfrac = masked_mean((pg_losses_clipped > pg_losses).float(), mask)  # () share of clipped tokens
    approxkl = 0.5 * masked_mean(log_ratio.pow(2), mask)  # () approx KL(pi_old || pi)
    return loss, clipfrac.detach(), approxkl.detach()


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss 0.5 E[max((V - R)^2, (V_clip - R)^2)] (detail 13). Returns ``(loss, vf_clipfrac)``."""
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)  # (B, T)
    vf_losses1 = (values - returns) ** 2  # (B, T) unclipped squared error
    vf_losses2 = (values_clipped - returns) ** 2  # (B, T) clipped squared error
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)  # () L^VF
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)  # ()
    return loss, vf_clipfrac.detach()
