"""Request validation: every bad input becomes an InvalidArgument that says what to fix."""

from __future__ import annotations

import math

from rlhf.v1 import policy_pb2
from service.errors import InvalidArgument
from service.sampling import SamplingSpec

MAX_CANDIDATES = 8
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_ID_CHARS = 256
MAX_COMMENT_CHARS = 4000


def check_prompt(prompt: str, max_chars: int) -> None:
    if not prompt or not prompt.strip():
        raise InvalidArgument("prompt is empty: send the user's message in GenerateRequest.prompt")
    if len(prompt) > max_chars:
        raise InvalidArgument(f"prompt is {len(prompt)} characters; the limit is {max_chars}")


def num_candidates(req: policy_pb2.GenerateRequest) -> int:
    n = req.num_candidates or 1
    if not 1 <= n <= MAX_CANDIDATES:
        raise InvalidArgument(f"num_candidates must be between 1 and {MAX_CANDIDATES}, got {n}")
    return n


def _float_field(params: policy_pb2.SamplingParams, name: str, default: float, lo: float, hi: float,
                 lo_open: bool) -> float:
    if not params.HasField(name):
        return default
    value = getattr(params, name)
    too_low = value <= lo if lo_open else value < lo
    if math.isnan(value) or too_low or value > hi:
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise InvalidArgument(f"sampling.{name} must be in {bound}, got {value}")
    return float(value)


def sampling_specs(req: policy_pb2.GenerateRequest, default_max_new: int, max_new_limit: int) -> list[SamplingSpec]:
    """One SamplingSpec per candidate (candidate i gets seed + i)."""
    n = num_candidates(req)
    p = req.sampling
    max_new = p.max_new_tokens or default_max_new
    if max_new > max_new_limit:
        raise InvalidArgument(f"sampling.max_new_tokens must be at most {max_new_limit}, got {max_new}")
    temperature = _float_field(p, "temperature", 1.0, 0.0, 100.0, lo_open=False)
    top_p = _float_field(p, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    if p.top_k > 100_000:
        raise InvalidArgument(f"sampling.top_k must be at most 100000, got {p.top_k}")
    stops = tuple(p.stop)
    if len(stops) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise InvalidArgument(
            f"sampling.stop takes at most {MAX_STOP_STRINGS} non-empty strings of up to {MAX_STOP_CHARS} characters")
    seed = p.seed if p.HasField("seed") else None
    return [
        SamplingSpec(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=p.top_k,
                     seed=None if seed is None else (seed + i) % (2**63), stop=stops)
        for i in range(n)
    ]


def check_short(name: str, value: str, limit: int = MAX_ID_CHARS) -> None:
    if len(value) > limit:
        raise InvalidArgument(f"{name} is {len(value)} characters; the limit is {limit}")


def check_feedback(req: policy_pb2.FeedbackRequest) -> list[str]:
    """The response ids a feedback request names, after checking its shape."""
    check_short("user_id", req.user_id)
    check_short("idempotency_key", req.idempotency_key)
    check_short("comment", req.comment, MAX_COMMENT_CHARS)
    check_short("feedback_token", req.feedback_token)
    check_short("rejected_feedback_token", req.rejected_feedback_token)
    kind = req.WhichOneof("kind")
    if kind == "rating":
        if not req.rating.response_id:
            raise InvalidArgument("rating.response_id is empty: name a response_id that Generate returned")
        return [req.rating.response_id]
    if kind == "comparison":
        c = req.comparison
        if not c.chosen_response_id or not c.rejected_response_id:
            raise InvalidArgument("comparison needs both chosen_response_id and rejected_response_id")
        if c.chosen_response_id == c.rejected_response_id:
            raise InvalidArgument("comparison names the same response twice: chosen and rejected must differ")
        return [c.chosen_response_id, c.rejected_response_id]
    raise InvalidArgument("feedback is empty: set either `rating` or `comparison`")
