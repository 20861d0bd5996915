"""training/voters.py against naive references, plus the behaviour the round relies on."""

from __future__ import annotations

import random

import pytest

from training.voters import Vote, cap_scale, reliability


def naive_reliability(votes, iterations=3, prior=2.0, floor=0.05):
    users = sorted({v.user for v in votes})
    items = sorted({v.item for v in votes})

    def x(u, i):
        mine = [v.value for v in votes if v.user == u and v.item == i]
        return sum(mine) / len(mine) if mine else None

    w = {u: 1.0 for u in users}
    for _ in range(iterations):
        new = {}
        for u in users:
            agree, shared = 0.0, 0.0
            for i in items:
                if x(u, i) is None:
                    continue
                others = [(w[v], x(v, i)) for v in users if v != u and x(v, i) is not None]
                if not others:
                    continue
                m = sum(wv * xv for wv, xv in others) / sum(wv for wv, _ in others)
                if x(u, i) * m > 0:  # with the others' majority (x is +-1 or a mean in between)
                    agree += abs(m) * (1 + abs(x(u, i))) / 2
                else:
                    agree += abs(m) * (1 - abs(x(u, i))) / 2
                shared += abs(m)
            p = (agree + prior) / (shared + 2 * prior)
            new[u] = min(1.0, max(floor, p / (1 - p)))
        w = new
    return w


def naive_cap(totals, max_share, steps=20000):
    users = [u for u, t in totals.items() if t > 0]
    c = max(max_share, 1 / len(users))
    level = c * sum(totals.values())
    for _ in range(steps):  # L <- c * sum min(T, L): decreasing to the fixed point
        level = c * sum(min(t, level) for t in totals.values())
    return {u: min(1.0, level / t) if t > 0 else 1.0 for u, t in totals.items()}


def random_votes(rng, n_users=6, n_items=8, n_votes=60):
    return [Vote(f"u{rng.randrange(n_users)}", f"i{rng.randrange(n_items)}", rng.choice((-1.0, 1.0)))
            for _ in range(n_votes)]


@pytest.mark.parametrize("seed", range(8))
def test_reliability_matches_naive(seed):
    votes = random_votes(random.Random(seed))
    fast, slow = reliability(votes), naive_reliability(votes)
    assert fast.keys() == slow.keys()
    for u in fast:
        assert fast[u] == pytest.approx(slow[u], abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_cap_matches_naive(seed):
    rng = random.Random(seed)
    totals = {f"u{k}": rng.choice([rng.uniform(0.1, 5), rng.uniform(50, 500)]) for k in range(rng.randrange(1, 9))}
    share = rng.choice([0.05, 0.2, 0.34, 0.5, 1.0])
    fast, slow = cap_scale(totals, share), naive_cap(totals, share)
    for u in totals:
        assert fast[u] == pytest.approx(slow[u], rel=1e-6)
    scaled = {u: totals[u] * fast[u] for u in totals}
    c = max(share, 1 / len(totals))
    assert max(scaled.values()) <= c * sum(scaled.values()) * (1 + 1e-9)


def test_minority_against_the_crowd_is_down_weighted():
    rng = random.Random(0)
    votes = []
    for item in range(40):
        truth = rng.choice((-1.0, 1.0))
        for u in range(8):  # 6 honest users (10% noise), 2 who vote the opposite way
            flip = u >= 6 or rng.random() < 0.1
            votes.append(Vote(f"u{u}", f"p{item}", -truth if flip else truth))
    w = reliability(votes)
    assert all(w[f"u{u}"] == 1.0 for u in range(6))
    assert all(w[f"u{u}"] < 0.2 for u in (6, 7))


def test_no_shared_items_means_no_evidence():
    w = reliability([Vote("a", "x", 1.0), Vote("b", "y", -1.0), Vote("a", "x", 1.0)])
    assert w == {"a": 1.0, "b": 1.0}


def test_spammer_repeats_count_once_per_item():
    votes = [Vote("spam", "p", -1.0)] * 500 + [Vote(f"h{k}", "p", 1.0) for k in range(5)]
    votes += [Vote("spam", f"q{k}", -1.0) for k in range(20)] + [Vote(f"h{j}", f"q{k}", 1.0)
                                                                  for k in range(20) for j in range(5)]
    w = reliability(votes)
    assert w["spam"] < 0.1
    assert all(w[f"h{k}"] == 1.0 for k in range(5))


def test_cap_limits_one_heavy_user_and_spares_single_user():
    scale = cap_scale({"spam": 500.0, "a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0, "e": 10.0}, 0.2)
    assert scale["a"] == 1.0
    assert 500.0 * scale["spam"] == pytest.approx(0.2 * (500.0 * scale["spam"] + 50.0))
    assert cap_scale({"only": 1000.0}, 0.1) == {"only": 1.0}
    assert cap_scale({"a": 3.0, "b": 1.0}, 0.1) == {"a": pytest.approx(1 / 3), "b": 1.0}
