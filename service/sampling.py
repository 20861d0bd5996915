"""Per-sequence sampling: temperature, top-k, top-p (nucleus), seeded generators.

Pure functions on one row of logits, so each candidate in a batch can carry its own settings.
Numerically safe for every accepted setting (temperature [0, 100], top_p (0, 1], top_k >= 0):
logits are taken in fp32, nan counts as -inf and +inf as the largest float, the scores are
shifted so that the best is 0 before the temperature divides them (nothing can overflow), and a
temperature below TEMPERATURE_FLOOR is greedy. The result is always a valid token id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEMPERATURE_FLOOR = 1e-4  # below this, sampling is greedy (dividing by it would only overflow)


@dataclass(frozen=True)
class SamplingSpec:
    """Validated sampling settings of one candidate."""

    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # 1: off
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Masks (to -inf) tokens outside the top-k and outside the top-p nucleus.

    logits: (V,) already divided by the temperature.
    """
    out = logits.clone()
    if 0 < top_k < out.numel():
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)  # (V,) sorted probabilities
        mass_before = torch.cumsum(probs, dim=-1) - probs  # (V,) mass of strictly better tokens
        drop_sorted = mass_before >= top_p  # keeps the smallest set whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        out[drop] = float("-inf")
    return out


def safe_logits(logits: torch.Tensor) -> torch.Tensor:
    """fp32 scores shifted so that the best is 0; nan -> -inf, +inf -> best. (V,) -> (V,)"""
    x = logits.detach().float()  # (V,)
    x = torch.nan_to_num(x, nan=float("-inf"), posinf=torch.finfo(torch.float32).max)  # (V,)
    best = x.max()
    if not torch.isfinite(best):  # every score is -inf or nan: no preference at all
        return torch.zeros_like(x)
    return x - best  # (V,) in [-inf, 0]; -inf where the difference overflows


def sample_token(logits: torch.Tensor, spec: SamplingSpec, generator: torch.Generator | None) -> int:
    """Draws the next token id from one row of logits (V,); always a valid id."""
    shifted = safe_logits(logits)  # (V,) best = 0
    if spec.temperature < TEMPERATURE_FLOOR:
        return int(torch.argmax(shifted))
    scaled = shifted / spec.temperature  # (V,) still <= 0, best = 0
    filtered = filter_logits(scaled, spec.top_k, spec.top_p)  # the best token always survives
    probs = torch.softmax(filtered, dim=-1)  # (V,) sums to >= 1 before normalising: no nan
    return inverse_cdf_draw(probs, generator)


def inverse_cdf_draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One draw from `probs` (V,) by inverting its CDF with a uniform u in [0, 1).

    The first index whose cumulative mass exceeds u * total: never a zero-probability token, always
    in range. One uniform per draw (cheaper than torch.multinomial on CPU for a single sample).
    """
    cdf = torch.cumsum(probs.double(), dim=-1)  # (V,) non-decreasing, cdf[-1] = total mass
    u = torch.rand((), dtype=torch.float64, generator=generator, device=probs.device)
    index = torch.searchsorted(cdf, u * cdf[-1], right=True)
    return min(int(index), probs.numel() - 1)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator for a seeded candidate (None: the global RNG)."""
    if seed is None:
        return None
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    generator = torch.Generator(device=gen_device)
    generator.manual_seed(seed)
    return generator


def stop_holdback(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                best = max(best, k)
                break
    return best


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
