"""The learning benchmark's measurements: a served version against SFT under the annotator's gold score, on
a set of prompts (win rate with a bootstrap CI over prompts, diversity, length, style mix), and the gold view of
a candidate the gate refused. Through the public gRPC API only, with seeded sampling."""

from __future__ import annotations

from typing import Any, Sequence

import grpc

from benchmarks.learning import metrics
from benchmarks.learning.annotators import Annotator, classify_style
from benchmarks.learning.rpc import Metadata, call
from rlhf.v1 import policy_pb2, policy_pb2_grpc

MAX_CANDIDATES = 8
"""Most candidates one Generate may ask for (the API's limit)."""


def sample_responses(policy_stub: policy_pb2_grpc.PolicyServiceStub, prompt: str, version: str, n: int,
                     seed: int, sampling: policy_pb2.SamplingParams | None = None, user_id: str = "sim-eval",
                     metadata: Metadata = None) -> tuple[list[str], str]:
    """``n`` responses to ``prompt`` from ``version`` ("" = current), in requests of at most 8
    candidates; returns the texts and the version that produced them."""
    texts: list[str] = []
    served = version
    while len(texts) < n:
        params = policy_pb2.SamplingParams()
        if sampling is not None:
            params.CopyFrom(sampling)
        params.seed = seed + len(texts)
        k = min(MAX_CANDIDATES, n - len(texts))
        resp = call(policy_stub.Generate, policy_pb2.GenerateRequest(
            prompt=prompt, sampling=params, num_candidates=k, model_version=version, user_id=user_id), metadata)
        texts.extend(c.text for c in resp.candidates)
        served = resp.model_version
    return texts, served


def _side_summary(prompts: Sequence[str], groups: list[list[str]], scores: list[list[float]]) -> dict[str, Any]:
    """Gold score, diversity, length and style mix of one side of an evaluation."""
    flat = [t for g in groups for t in g]
    m, lo, hi = metrics.mean_ci([s for g in scores for s in g])
    return {"mean_score": m, "score_lo": lo, "score_hi": hi, **metrics.summarize_responses(flat),
            "styles": metrics.shares([classify_style(t) for t in flat]),
            "examples": [{"prompt": p, "response": g[0]} for p, g in list(zip(prompts, groups))[:3]],
            "scores": scores}


def sample_and_score(policy_stub: policy_pb2_grpc.PolicyServiceStub, prompts: Sequence[str], annotator: Annotator,
                     version: str, samples_per_prompt: int, seed: int, sampling: policy_pb2.SamplingParams | None,
                     metadata: Metadata) -> tuple[list[list[str]], list[list[float]], str]:
    """``version``'s samples and their gold scores, grouped by prompt (prompt i samples with seeds from
    seed + 1000 i), and the version that produced them."""
    groups, scores, served = [], [], version
    for i, prompt in enumerate(prompts):
        texts, served = sample_responses(policy_stub, prompt, version, samples_per_prompt, seed + 1000 * i,
                                         sampling, metadata=metadata)
        groups.append(texts)
        scores.append([annotator.score(prompt, t) for t in texts])
    return groups, scores, served


def refused_by_gold(policy_stub: policy_pb2_grpc.PolicyServiceStub, prompts: Sequence[str], annotator: Annotator,
                    candidate: str, ev: dict[str, Any], seed: int, sampling: policy_pb2.SamplingParams | None,
                    metadata: Metadata) -> dict[str, Any]:
    """The gold annotator's view of a candidate the gate refused (pinned by ``model_version``): its win
    rate against SFT and against the parent it would have replaced, whose samples ``ev`` (this round's
    evaluation, same prompts and seeds) holds. Tells a gate that refuses better candidates from one
    that refuses worse ones; the service never sees these numbers."""
    try:
        _, scores, _ = sample_and_score(policy_stub, prompts, annotator, candidate, ev["samples_per_prompt"],
                                        seed, sampling, metadata)
    except grpc.RpcError as e:  # e.g. pruned from the registry: reported, not fatal
        return {"version": candidate, "error": f"{e.code().name}: {e.details()}"}
    vs_sft = metrics.grouped_win_rate(scores, ev["sft"]["scores"], seed=seed)
    vs_parent = metrics.grouped_win_rate(scores, ev["served"]["scores"], seed=seed)
    return {"version": candidate, "win_rate_vs_sft": vs_sft.rate, "win_rate_vs_parent": vs_parent.rate,
            "win_rate_vs_parent_lo": vs_parent.lo, "win_rate_vs_parent_hi": vs_parent.hi}


def evaluate(policy_stub: policy_pb2_grpc.PolicyServiceStub, prompts: Sequence[str], annotator: Annotator,
             version: str = "", sft_version: str = "v0001", samples_per_prompt: int = 4, seed: int = 0,
             sampling: policy_pb2.SamplingParams | None = None, metadata: Metadata = None,
             sft_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Served ``version`` ("" = current) against the SFT version under the annotator's gold score.

    Both sides sample ``samples_per_prompt`` responses per prompt with the same seeds; the win
    rate compares every served sample with every SFT sample of the same prompt (ties half) and
    its 95% CI bootstraps over prompts. Pass the same ``sft_cache`` dict to repeated calls (same
    prompts, seed and sampling) to sample the SFT side only once.
    """
    sides: dict[str, dict[str, Any]] = {}
    served_version = version
    for name, ver in (("served", version), ("sft", sft_version)):
        if name == "sft" and sft_cache is not None and sft_cache.get("version") == sft_version:
            sides[name] = sft_cache["side"]
            continue
        groups, scores, produced = sample_and_score(policy_stub, prompts, annotator, ver, samples_per_prompt,
                                                    seed, sampling, metadata)
        if name == "served":
            served_version = produced
        sides[name] = {"groups": groups, "scores": scores}
        if name == "sft" and sft_cache is not None:
            sft_cache.update(version=sft_version, side=sides[name])
    win = metrics.grouped_win_rate(sides["served"]["scores"], sides["sft"]["scores"], seed=seed)
    return {
        "version": served_version, "sft_version": sft_version, "annotator": annotator.name,
        "n_prompts": len(prompts), "samples_per_prompt": samples_per_prompt,
        "win_rate": win.rate, "win_rate_lo": win.lo, "win_rate_hi": win.hi,
        "served": _side_summary(prompts, sides["served"]["groups"], sides["served"]["scores"]),
        "sft": _side_summary(prompts, sides["sft"]["groups"], sides["sft"]["scores"]),
    }
