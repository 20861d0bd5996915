"""A round's figures into the version manifest (TrainingSummary, PromotionDecision): every number
the gate decided on is recorded on the version, whether it was promoted or not."""

from __future__ import annotations

import time

from rlhf.v1 import records_pb2
from workers.state import RoundState

NAN = float("nan")


def _num(value) -> float:
    """A float for a proto double field; NaN for a missing figure."""
    return NAN if value is None else float(value)


def fill_training(t: records_pb2.TrainingSummary, state: RoundState) -> None:
    rm, judge, data, ppo = state.reward_model, state.judge or {}, state.data, state.ppo or {}
    t.first_feedback_id, t.last_feedback_id = data["first_feedback_id"], data["last_feedback_id"]
    t.num_comparisons, t.num_ratings, t.num_prompts = data["num_comparisons"], data["num_ratings"], data["num_prompts"]
    t.reward_model_accuracy = _num(rm.get("heldout_accuracy"))
    t.reward_model_loss = rm.get("train_loss") or 0.0
    t.reward_model_members = rm.get("members") or 1
    t.judge_model_accuracy, t.judge_model_loss = _num(judge.get("heldout_accuracy")), _num(judge.get("train_loss"))
    t.reward_model_pairs, t.judge_model_pairs = rm.get("n_pairs") or 0, judge.get("n_pairs") or 0
    t.reward_model_heldout_pairs, t.judge_model_heldout_pairs = rm.get("n_heldout") or 0, judge.get("n_heldout") or 0
    t.reward_model_prompts, t.judge_model_prompts = rm.get("n_prompts") or 0, judge.get("n_prompts") or 0
    t.ppo_mean_reward, t.ppo_kl = ppo.get("mean_reward", NAN), ppo.get("kl", NAN)
    t.reward_norm_gain, t.reward_norm_bias = ppo.get("reward_gain", NAN), ppo.get("reward_bias", NAN)
    t.ppo_eos_rate, t.ppo_mean_response_len = ppo.get("eos_fraction", NAN), ppo.get("mean_response_len", NAN)
    t.ppo_entropy, t.ent_coef = ppo.get("entropy", NAN), ppo.get("ent_coef") or 0.0
    t.repeat_coef, t.ppo_distinct_2_ratio = ppo.get("repeat_coef") or 0.0, ppo.get("distinct_2_ratio") or 0.0
    t.missing_eos_penalty = _num(ppo.get("missing_eos_penalty"))
    t.seconds = time.time() - state.started_at
    t.description = f"ppo round {state.round_number} ({state.round_id})"


def fill_promotion(p: records_pb2.PromotionDecision, ev: dict, promoted: bool, reason: str, checks: list,
                   kl_bound: float) -> None:
    g, cand, parent, ref = ev["gate"], ev["candidate"], ev["parent"], ev["reference"]
    p.promoted, p.reason = promoted, reason
    p.candidate_reward, p.parent_reward = _num(g["candidate_reward"]), _num(g["parent_reward"])  # the judge's
    p.kl_to_reference, p.kl_bound = _num(g["kl"]), kl_bound
    p.judge_accuracy = _num(g["judge_accuracy"])
    p.win_rate, p.win_rate_lower_bound = _num(g["win_rate"]), _num(g["win_rate_lower_bound"])
    p.win_rate_confidence = ev["confidence"]
    p.eval_prompts, p.samples_per_prompt = ev["n_prompts"], ev["samples_per_prompt"]
    p.candidate_eos_rate, p.parent_eos_rate, p.reference_eos_rate = cand["eos_rate"], parent["eos_rate"], ref["eos_rate"]
    p.candidate_mean_length, p.parent_mean_length = cand["mean_length"], parent["mean_length"]
    p.reference_mean_length = ref["mean_length"]
    p.candidate_distinct_2, p.parent_distinct_2 = cand["distinct_2"], parent["distinct_2"]
    p.reference_distinct_2 = ref["distinct_2"]
    by_name = {c.name: c for c in checks}
    p.length_ratio, p.distinct_2_ratio = by_name["length_ratio"].value, by_name["distinct_2"].value
    p.policy_rm_candidate_reward = _num(cand.get("policy_rm_reward"))
    p.policy_rm_parent_reward = _num(parent.get("policy_rm_reward"))
    p.parent_kl_to_reference = _num(parent.get("kl"))
    judges = ev.get("judges") or {"members": 1}
    p.judge_members = judges["members"]
    p.judge_member_win_rates.extend(judges.get("member_win_rates", []))
    p.judge_disagreement = judges.get("disagreement", 0.0)
    for c in checks:
        p.checks.add(name=c.name, passed=c.passed, value=c.value,
                     threshold=c.threshold, message=c.message)
    p.decided_at.GetCurrentTime()
