"""Feedback hygiene math: voter reliability weights and a per-user cap on training weight.

Pure functions over plain values (no Redis, no files). Used by workers/snapshots.py on every round.

Notation (one line per quantity in the code below):
    x[u][i]      in [-1, 1]  user u's vote on item i (the mean when u voted on i more than once);
                             an item is what votes can agree on: a prompt (thumbs), a response pair
    w[u]         in (0, 1]   reliability weight of user u (iteration t; w = 1 at t = 0)
    m_-u[i]      in [-1, 1]  weighted mean vote of the OTHER users on item i
    a[u]         >= 0        agreement of u with the others, each item weighted by how clearly the others
                             agree among themselves: sum_i (|m_-u[i]| + x[u][i] * m_-u[i]) / 2
                             (= |m| when u votes with the others' majority, 0 when against it)
    n[u]         >= 0        evidence: sum_i |m_-u[i]| over items u shares with other users (a split crowd
                             says nothing about u)
    p[u]         in (0, 1)   smoothed agreement rate (a + prior) / (n + 2 prior)   (a Beta(prior, prior) prior)
    w[u]                     clip(p / (1 - p), floor, 1): the odds of agreeing; a user who agrees at least
                             half the time keeps weight 1, one who mostly votes against the crowd
                             is weighted by how much more often they disagree than agree.

The cap: with T[u] the total weight of user u's items and c = max(max_share, 1 / #users), find the
level L with L = c * sum_v min(T[v], L) and scale user u's items by s[u] = min(1, L / T[u]); then no
user holds more than c of the total (water-filling; exact, see `cap_scale`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Vote:
    """One vote: +1 / -1 on an item (items are keys: equal keys are votes on the same thing)."""

    user: str
    item: str
    value: float


def user_item_means(votes: list[Vote]) -> dict[str, dict[str, float]]:
    """x[u][i]: each user's mean vote per item (one user, one voice per item)."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for v in votes:
        sums[v.user][v.item] += v.value
        counts[v.user][v.item] += 1
    return {u: {i: sums[u][i] / counts[u][i] for i in sums[u]} for u in sums}


def _agreement_odds(agree: float, shared: float, prior: float, floor: float) -> float:
    p = (agree + prior) / (shared + 2 * prior)  # smoothed agreement rate
    return min(1.0, max(floor, p / (1.0 - p)))  # odds of agreeing, clipped to [floor, 1]


def reliability(votes: list[Vote], iterations: int = 3, prior: float = 2.0, floor: float = 0.05) -> dict[str, float]:
    """w[u] for every user who voted (see the module docstring)."""
    x = user_item_means(votes)
    w = {u: 1.0 for u in x}
    for _ in range(iterations):
        s_i: dict[str, float] = defaultdict(float)  # sum_v w[v] x[v][i]
        z_i: dict[str, float] = defaultdict(float)  # sum_v w[v]
        for u, items in x.items():
            for i, xi in items.items():
                s_i[i] += w[u] * xi
                z_i[i] += w[u]
        new_w = {}
        for u, items in x.items():
            agree, shared = 0.0, 0.0
            for i, xi in items.items():
                z_others = z_i[i] - w[u]
                if z_others <= 1e-12:
                    continue  # nobody else voted on i
                m_others = (s_i[i] - w[u] * xi) / z_others  # m_-u[i]
                agree += (abs(m_others) + xi * m_others) / 2.0  # a[u]
                shared += abs(m_others)  # n[u]
            new_w[u] = _agreement_odds(agree, shared, prior, floor)
        w = new_w
    return w


def cap_scale(totals: dict[str, float], max_share: float) -> dict[str, float]:
    """s[u] in (0, 1] so that no user's scaled total exceeds c = max(max_share, 1/#users) of the sum."""
    users = [u for u, t in totals.items() if t > 0]
    if not users:
        return {u: 1.0 for u in totals}
    c = max(max_share, 1.0 / len(users))
    ordered = sorted((totals[u] for u in users), reverse=True)  # T_(1) >= T_(2) >= ...
    level = None
    if ordered[0] > c * sum(ordered):
        rest = sum(ordered)
        for k in range(1, len(ordered)):  # k users capped at the level
            rest -= ordered[k - 1]  # R_k = sum of the uncapped totals
            if k * c >= 1.0:
                break
            candidate = c * rest / (1.0 - k * c)  # L solving L = c (k L + R_k)
            if ordered[k] <= candidate:
                level = candidate
                break
        if level is None:
            level = ordered[-1]  # c = 1/#users: everyone at the smallest total
    return {u: 1.0 if level is None or totals[u] <= level else level / totals[u] for u in totals}
