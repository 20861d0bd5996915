"""Holding the policy's diversity during PPO: a penalty on repeated n-grams whose weight follows a distinct-2 floor.

Collapse here is many responses sharing the same phrases: a rollout batch's distinct-2 falls while the mean
per-token entropy of the policy hardly moves (measured: benchmarks/results/LEARNING.md), so an entropy bonus,
fixed or adaptive, pushes on the wrong quantity. The penalty acts on the quantity itself. Each response token
that ends a bigram found c times among the batch's bigrams gets

    p_t = (c - 1) / c        (0 for a bigram no other position uses),

whose sum over the batch is (all bigrams - distinct bigrams): the distinct-2 deficit, counted in bigrams. The
per-token reward becomes r_t - lambda p_t. lambda is the Lagrange multiplier of the constraint

    d(pi) / d(pi_ref) >= rho        (d: distinct-2 of a rollout batch's responses),

raised by dual ascent while the batches sampled fall below the floor and lowered (to 0) while they are above
it, the way the adaptive KL controller steers beta towards a KL target (Ziegler et al. 2019 eq. 2): a policy
that keeps its diversity is never penalised. d is measured on token ids, the same way for the policy's rollout
batches and for the reference's samples on the fixed prompt set (training/reference.py), in batches of the same
size: distinct-n falls with the number of n-grams counted, so only equal sizes compare.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import torch
from torch import Tensor


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple]:
    """All contiguous n-grams of a sequence, in order (the k-th ends at its item k + n - 1)."""
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_share(seqs: Iterable[Sequence[Hashable]], n: int) -> float:
    """Distinct-n of a set of sequences: unique n-grams / all n-grams, within each sequence (0 when there are none).
    The gate applies it to words (training/gate.py), the diversity floor to token ids."""
    grams = [g for seq in seqs for g in ngrams(seq, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def response_tokens(tokens: Tensor, mask: Tensor) -> list[list[int]]:
    """Each response's token ids; tokens, mask: (B, T), the mask a prefix of each row."""
    return [[t for t, m in zip(row, row_mask) if m] for row, row_mask in zip(tokens.tolist(), mask.tolist())]


def token_distinct_n(tokens: Tensor, mask: Tensor, n: int) -> float:
    """Distinct-n of a batch of responses' token ids (0 when no response has n tokens)."""
    return distinct_share(response_tokens(tokens, mask), n)


def repeat_shares(tokens: Tensor, mask: Tensor, n: int) -> Tensor:
    """(B, T) p_t = (c - 1) / c at each token ending an n-gram found c times in the batch; 0 elsewhere."""
    per_row = [ngrams(ids, n) for ids in response_tokens(tokens, mask)]
    counts = Counter(g for row in per_row for g in row)  # c(g) over the whole batch
    shares = torch.zeros(tokens.shape, dtype=torch.float32)  # (B, T)
    for b, row in enumerate(per_row):
        for k, g in enumerate(row):
            shares[b, k + n - 1] = (counts[g] - 1) / counts[g]
    return shares.to(tokens.device)


def floor_coef_step(coef: float, ratio: float, floor: float, lr: float, max_coef: float) -> float:
    """One dual-ascent step on lambda: lambda <- clip(lambda + eta (rho - d(pi)/d(pi_ref)), 0, lambda_max)."""
    violation = floor - ratio  # > 0: the batch is less diverse than the floor allows
    return min(max(coef + lr * violation, 0.0), max_coef)


class DiversityFloor:
    """lambda, the weight of the repeat penalty in each PPO step, held by a distinct-2 floor (0 when ``floor`` is None)."""

    def __init__(self, floor: float | None, reference_distinct: float | None, lr: float, max_coef: float) -> None:
        if floor is not None and not reference_distinct:
            raise ValueError("a diversity floor needs the reference's distinct-2 (> 0)")
        self.value = 0.0
        self.floor, self.reference, self.lr, self.max_coef = floor, reference_distinct, lr, max_coef

    def update(self, distinct: float) -> float | None:
        """Moves lambda by this batch's distinct-2; returns its ratio to the reference's (None without a floor)."""
        if self.floor is None or self.reference is None:
            return None
        ratio = distinct / self.reference  # d(pi) / d(pi_ref)
        self.value = floor_coef_step(self.value, ratio, self.floor, self.lr, self.max_coef)
        return ratio
