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


# --- numerical safety over the whole accepted range (issue 12.1) -----------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

from service.sampling import TEMPERATURE_FLOOR, safe_logits  # noqa: E402

SPECIAL = st.sampled_from([float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e30, -1e30, 0.0])
SCORE = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), SPECIAL)


@hsettings(max_examples=400, deadline=None)
@given(scores=st.lists(SCORE, min_size=1, max_size=64),
       temperature=st.one_of(st.floats(0.0, 100.0), st.sampled_from([0.0, 1e-40, 1e-30, 1e-8, TEMPERATURE_FLOOR, 100.0])),
       top_p=st.one_of(st.floats(1e-45, 1.0, exclude_min=False), st.sampled_from([1e-45, 1e-10, 0.5, 1.0])),
       top_k=st.one_of(st.integers(0, 100_000), st.sampled_from([0, 1, 2, 100_000])),
       seed=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_sampling_always_returns_a_valid_token(scores, temperature, top_p, top_k, seed, dtype):
    logits = torch.tensor(scores, dtype=torch.float64).to(dtype)  # extreme values overflow to inf in half types
    spec = SamplingSpec(max_new_tokens=1, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    token = sample_token(logits, spec, make_generator(seed, torch.device("cpu")))
    assert 0 <= token < len(scores)
    finite = [x for x in logits.float().tolist() if not math.isnan(x)]
    if finite and temperature < TEMPERATURE_FLOOR:  # greedy: a best-scoring token
        assert logits.float()[token].item() == max(finite)


def test_tiny_temperature_is_greedy_and_does_not_overflow():
    logits = torch.tensor([0.5, 2.0, -1.0, 1.9])
    for t in (1e-40, 1e-30, 1e-8):
        assert sample_token(logits, SamplingSpec(max_new_tokens=1, temperature=t), None) == 1
    # just above the floor it still samples: the best token dominates, nothing is nan
    gen = make_generator(0, torch.device("cpu"))
    assert sample_token(logits, SamplingSpec(max_new_tokens=1, temperature=TEMPERATURE_FLOOR), gen) == 1


def test_safe_logits_guards_nan_and_inf():
    out = safe_logits(torch.tensor([float("nan"), 1.0, float("inf"), float("-inf")]))
    assert out[2].item() == 0.0  # +inf is the best score
    assert out[0].item() == float("-inf") and out[3].item() == float("-inf")  # nan never wins
    assert torch.all(safe_logits(torch.full((4,), float("nan"))) == 0)  # no information: uniform, not nan


def test_inverse_cdf_draw_matches_the_distribution():
    from service.sampling import inverse_cdf_draw
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0])
    gen = make_generator(1, torch.device("cpu"))
    counts = torch.bincount(torch.tensor([inverse_cdf_draw(probs, gen) for _ in range(4000)]), minlength=6)
    assert counts[0] == counts[2] == counts[5] == 0  # zero-probability tokens are never drawn
    assert torch.allclose(counts.float() / 4000, probs, atol=0.03)
    assert inverse_cdf_draw(torch.tensor([0.0, 0.0, 1e-30]), gen) == 2
