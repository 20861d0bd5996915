"""The simulated user population of the learning benchmark.

- a :class:`Crowd` of ``users`` users, each with its own ``user_id`` (sent on Generate and
  SubmitFeedback, so per-user feedback hygiene can tell them apart); the first
  ``adversarial_fraction`` of them vote the opposite way of the annotator (chosen <-> rejected,
  up <-> down);
- ``thumbs_only``: users are served one candidate and only ever give a thumbs up/down;
- :func:`spam`: one more user who repeats one opposite vote ``votes`` times per round, each with a
  fresh idempotency key (refusals by the server, e.g. a rate limit, are counted, not retried).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Sequence

import grpc

from benchmarks.learning.annotators import Annotator
from rlhf.v1 import policy_pb2, policy_pb2_grpc

SPAMMER_SUFFIX = "spammer"


@dataclass
class Crowd:
    """``users`` simulated users named ``<base_id>-u<k>``; the first ``adversarial`` of them vote
    against the annotator."""

    base_id: str = "sim-user"
    users: int = 12
    adversarial_fraction: float = 0.0
    thumbs_only: bool = False

    @property
    def adversarial(self) -> int:
        return round(self.users * self.adversarial_fraction)

    @property
    def user_ids(self) -> list[str]:
        return [f"{self.base_id}-u{k:02d}" for k in range(self.users)]

    @property
    def adversarial_ids(self) -> list[str]:
        return self.user_ids[: self.adversarial]

    @property
    def spammer_id(self) -> str:
        return f"{self.base_id}-{SPAMMER_SUFFIX}"

    def pick(self, rng: random.Random) -> tuple[str, bool]:
        """A uniformly drawn user: (user_id, votes against the annotator)."""
        k = rng.randrange(self.users)
        return self.user_ids[k], k < self.adversarial


def opposite_request(prompt: str, cands: Sequence[policy_pb2.Candidate], annotator: Annotator,
                     thumbs_only: bool) -> policy_pb2.FeedbackRequest:
    """The annotator's noiseless verdict, reversed: the worse candidate chosen, or the first
    candidate rated the wrong way (thumbs-only, or both candidates the same text)."""
    a = cands[0]
    if thumbs_only or len(cands) < 2 or cands[1].text == a.text:
        up = not annotator.score(prompt, a.text) >= annotator.rate_threshold
        return policy_pb2.FeedbackRequest(rating=policy_pb2.Rating(response_id=a.response_id, thumbs_up=up))
    b = cands[1]
    worse, better = (a, b) if annotator.score(prompt, a.text) <= annotator.score(prompt, b.text) else (b, a)
    return policy_pb2.FeedbackRequest(comparison=policy_pb2.Comparison(
        chosen_response_id=worse.response_id, rejected_response_id=better.response_id))


def spam(policy_stub: policy_pb2_grpc.PolicyServiceStub, prompt: str, annotator: Annotator, crowd: Crowd,
         votes: int, rng: random.Random, sampling: policy_pb2.SamplingParams | None = None,
         metadata=None) -> dict[str, int]:
    """The spammer: one Generate, then the same opposite vote ``votes`` times with fresh
    idempotency keys. Returns how many were acknowledged, duplicates and refused (by code)."""
    params = policy_pb2.SamplingParams()
    if sampling is not None:
        params.CopyFrom(sampling)
    params.seed = rng.getrandbits(62)
    user = crowd.spammer_id
    resp = policy_stub.Generate(policy_pb2.GenerateRequest(
        prompt=prompt, sampling=params, num_candidates=1 if crowd.thumbs_only else 2, user_id=user),
        metadata=metadata, timeout=120)
    req = opposite_request(prompt, resp.candidates, annotator, crowd.thumbs_only)
    req.user_id = user
    out: dict[str, int] = {"sent": 0, "acknowledged": 0, "duplicates": 0, "refused": 0}
    for _ in range(votes):
        req.idempotency_key = f"{user}:{uuid.uuid4().hex}"
        out["sent"] += 1
        try:
            ack = policy_stub.SubmitFeedback(req, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            out["refused"] += 1
            key = f"refused_{exc.code().name.lower()}"
            out[key] = out.get(key, 0) + 1
            continue
        out["acknowledged"] += 1
        out["duplicates"] += ack.duplicate
    return out
