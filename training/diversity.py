"""Holding the policy's diversity during PPO: an entropy bonus whose weight follows a distinct-2 floor.

A fixed entropy bonus c_ent H(pi) (detail 15) either does nothing against collapse or slows learning
from the first step (benchmarks/results/LEARNING.md: 0.01 held distinct-2 at 0.9-1.0x the SFT reference and
learned much less; 0.003 learned less too). Here c_ent is the Lagrange multiplier of a constraint instead,

    d(pi) / d(pi_ref) >= rho        (d: distinct-2 of a rollout batch's responses),

raised by dual ascent while the batches sampled fall below the floor and lowered (to 0) while they are
above it, the way the adaptive KL controller steers beta towards a KL target (Ziegler et al. 2019 eq. 2;
SAC's automatic temperature, Haarnoja et al. 2018, does the same for an entropy target). A policy that keeps
its diversity never pays for the bonus. d is measured on token ids, the same way for the policy's rollout
batches and for the reference's samples on the fixed prompt set (training/ppo_trainer.py), in batches of
the same size: distinct-n falls with the number of n-grams counted, so only equal sizes compare.
"""

from __future__ import annotations

from torch import Tensor


def token_distinct_n(tokens: Tensor, mask: Tensor, n: int) -> float:
    """Distinct-n of a batch of responses: unique token n-grams / all n-grams within the masked responses.

    tokens, mask: (B, T) response token ids and 1 where a token belongs to the response. 0 when no response
    has n tokens.
    """
    grams: list[tuple[int, ...]] = []
    for row, row_mask in zip(tokens.tolist(), mask.tolist()):
        ids = [t for t, m in zip(row, row_mask) if m]  # a response's tokens (the mask is a prefix)
        grams.extend(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def entropy_coef_step(coef: float, ratio: float, floor: float, lr: float, max_coef: float) -> float:
    """One dual-ascent step on c_ent: c <- clip(c + eta (rho - d(pi)/d(pi_ref)), 0, c_max)."""
    violation = floor - ratio  # > 0: the batch is less diverse than the floor allows
    return min(max(coef + lr * violation, 0.0), max_coef)


class DiversityFloor:
    """The entropy coefficient c_ent of each PPO step, held by a distinct-2 floor (or fixed when ``floor`` is None)."""

    def __init__(self, init_coef: float, floor: float | None, reference_distinct: float | None, lr: float,
                 max_coef: float) -> None:
        if floor is not None and not reference_distinct:
            raise ValueError("a diversity floor needs the reference's distinct-2 (> 0)")
        self.value = float(init_coef)
        self.floor, self.reference, self.lr, self.max_coef = floor, reference_distinct, lr, max_coef

    def update(self, distinct: float) -> float | None:
        """Moves c_ent by this batch's distinct-2; returns its ratio to the reference's (None when fixed)."""
        if self.floor is None or self.reference is None:
            return None
        ratio = distinct / self.reference  # d(pi) / d(pi_ref)
        self.value = entropy_coef_step(self.value, ratio, self.floor, self.lr, self.max_coef)
        return ratio
