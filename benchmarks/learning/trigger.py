"""The operator's side of a benchmark round, through AdminService and GetModel only: force a round,
wait for its outcome, read the version's training and gate figures."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from benchmarks.learning.rpc import Metadata, call
from rlhf.v1 import admin_pb2, admin_pb2_grpc, policy_pb2, policy_pb2_grpc


@dataclass
class RoundOutcome:
    """Result of :func:`trigger_and_wait`. ``new_version`` is set when serving moved to a new
    version; ``rejected`` when a new version was registered but not promoted by the gate."""

    task_id: str
    previous_version: str
    new_version: str | None = None
    candidate_version: str | None = None
    rejected: bool = False
    timed_out: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _registered(admin_stub: admin_pb2_grpc.AdminServiceStub, metadata: Metadata) -> dict[str, policy_pb2.ModelInfo]:
    resp = call(admin_stub.ListModels, admin_pb2.ListModelsRequest(), metadata)
    return {m.model_version: m for m in resp.models}


def current_version(policy_stub: policy_pb2_grpc.PolicyServiceStub, metadata: Metadata = None) -> str:
    """The version the server answers with now."""
    return call(policy_stub.GetModel, policy_pb2.GetModelRequest(), metadata).model_version


def trigger_and_wait(admin_stub: admin_pb2_grpc.AdminServiceStub, policy_stub: policy_pb2_grpc.PolicyServiceStub,
                     timeout: float = 900.0, poll_s: float = 1.0, admin_metadata: Metadata = None,
                     metadata: Metadata = None, on_poll: Callable[[], None] | None = None) -> RoundOutcome:
    """Force a training round, then poll until the served version changes (promoted), a new
    version shows up unpromoted in ListModels (rejected by the gate), or ``timeout`` passes.
    ``on_poll`` runs every poll (e.g. to raise when the worker process died)."""
    start = time.monotonic()
    before = current_version(policy_stub, metadata)
    known = set(_registered(admin_stub, admin_metadata))
    task = call(admin_stub.TriggerRound, admin_pb2.TriggerRoundRequest(force=True), admin_metadata)
    out = RoundOutcome(task_id=task.task_id, previous_version=before)
    while time.monotonic() - start < timeout:
        if on_poll is not None:
            on_poll()
        now = current_version(policy_stub, metadata)
        if now != before:
            out.new_version = out.candidate_version = now
            break
        new = {v: m for v, m in _registered(admin_stub, admin_metadata).items() if v not in known}
        if new:
            latest = new[max(new)]
            out.candidate_version = latest.model_version
            if not latest.promotion.promoted:
                out.rejected = True
                break
        time.sleep(poll_s)
    else:
        out.timed_out = True
    out.seconds = time.monotonic() - start
    return out


def model_summary(info: policy_pb2.ModelInfo) -> dict[str, Any]:
    """Training and promotion-gate numbers of one version (ModelInfo.training / .promotion)."""
    t, p = info.training, info.promotion
    return {
        "version": info.model_version, "parent_version": info.parent_version, "current": info.current,
        "reward_model_accuracy": t.reward_model_accuracy, "reward_model_loss": t.reward_model_loss,
        "reward_model_members": t.reward_model_members,
        "ppo_mean_reward": t.ppo_mean_reward, "ppo_kl": t.ppo_kl, "num_comparisons": t.num_comparisons,
        "num_ratings": t.num_ratings, "train_seconds": t.seconds, "description": t.description,
        "promoted": p.promoted, "reason": p.reason, "candidate_reward": p.candidate_reward,
        "parent_reward": p.parent_reward, "kl_to_reference": p.kl_to_reference, "kl_bound": p.kl_bound,
        "judge_accuracy": p.judge_accuracy, "judge_model_accuracy": t.judge_model_accuracy,
        "gate_win_rate": p.win_rate, "gate_win_rate_lower_bound": p.win_rate_lower_bound,
        "judge_members": p.judge_members, "judge_member_win_rates": list(p.judge_member_win_rates),
        "judge_disagreement": p.judge_disagreement,
    }
