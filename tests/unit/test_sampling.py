"""Per-candidate sampling functions against naive references."""

from __future__ import annotations

import math

import torch

from service.sampling import SamplingSpec, filter_logits, find_stop, make_generator, sample_token, stop_holdback


def naive_top_p(logits: list[float], top_p: float) -> set[int]:
    """Smallest set of most likely tokens whose probability mass reaches top_p."""
    z = sum(math.exp(x) for x in logits)
    probs = sorted(((math.exp(x) / z, i) for i, x in enumerate(logits)), reverse=True)
    kept, mass = set(), 0.0
    for p, i in probs:
        if mass >= top_p:
            break
        kept.add(i)
        mass += p
    return kept


def kept(filtered: torch.Tensor) -> set[int]:
    return {i for i, x in enumerate(filtered.tolist()) if x != float("-inf")}


def test_top_p_matches_naive_reference():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(20, generator=gen) * 3
        for top_p in (0.1, 0.5, 0.9, 0.99):
            assert kept(filter_logits(logits, 0, top_p)) == naive_top_p(logits.tolist(), top_p)


def test_top_k_keeps_k_best():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5])
    assert kept(filter_logits(logits, 2, 1.0)) == {1, 3}
    assert kept(filter_logits(logits, 0, 1.0)) == set(range(5))  # 0: off


def test_greedy_and_seeded_sampling():
    logits = torch.tensor([0.0, 5.0, 1.0])
    assert sample_token(logits, SamplingSpec(max_new_tokens=1, temperature=0.0), None) == 1
    spec = SamplingSpec(max_new_tokens=1, temperature=1.0)
    gen = make_generator(3, torch.device("cpu"))
    seq_a = [sample_token(torch.zeros(50), spec, gen) for _ in range(20)]
    gen = make_generator(3, torch.device("cpu"))
    assert [sample_token(torch.zeros(50), spec, gen) for _ in range(20)] == seq_a


def test_stop_strings():
    assert find_stop("Hello. Bye", ("Bye", "xyz")) == 7
    assert find_stop("Hello", ("Bye",)) is None
    assert stop_holdback("Hello B", ("Bye",)) == 1  # "B" may become "Bye": hold it back
    assert stop_holdback("Hello By", ("Bye", "y!")) == 2
    assert stop_holdback("Hello", ("Bye",)) == 0
