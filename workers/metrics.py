"""Prometheus metrics of a worker process (served on RLHF_WORKER_METRICS_PORT).

Run training workers with `--pool=solo` (or threads): tasks then run in the process that serves
the metrics. Rounds are serialised by the round lock anyway.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()
ROUNDS = Counter("rlhf_training_rounds_total",
                 "Training rounds by outcome (promoted, rejected, failed, abandoned, skipped).",
                 ["outcome"], registry=REGISTRY)
STALE_TASKS = Counter("rlhf_round_stale_tasks_total",
                      "Redelivered stage tasks of a round already ended or abandoned (stopped unrun).",
                      registry=REGISTRY)
ROUND_SECONDS = Histogram("rlhf_round_duration_seconds", "Wall time of a finished round.",
                          buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200), registry=REGISTRY)
STAGE_SECONDS = Histogram("rlhf_round_stage_duration_seconds", "Wall time of a round's stage.", ["stage"],
                          buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800), registry=REGISTRY)
RM_LOSS = Gauge("rlhf_reward_model_loss", "Bradley-Terry training loss of the last reward model.", registry=REGISTRY)
RM_ACCURACY = Gauge("rlhf_reward_model_accuracy", "Held-out pair accuracy of the last reward model.",
                    registry=REGISTRY)
PPO_REWARD = Gauge("rlhf_ppo_mean_reward", "Mean reward-model score of the last PPO step.", registry=REGISTRY)
PPO_KL = Gauge("rlhf_ppo_kl", "KL to the SFT reference (nats per response) at the last PPO step.",
               registry=REGISTRY)
PPO_CLIPFRAC = Gauge("rlhf_ppo_clip_fraction", "Clipped share of the policy ratio at the last PPO step.",
                     registry=REGISTRY)
BACKLOG = Gauge("rlhf_feedback_backlog", "Feedback stream entries not yet in a training set.", registry=REGISTRY)
DOWNWEIGHTED_USERS = Gauge("rlhf_feedback_downweighted_users",
                           "Users whose votes the last training set down-weighted as unreliable (voting against "
                           "the other users on shared prompts).", registry=REGISTRY)
CAPPED_USERS = Gauge("rlhf_feedback_capped_users",
                     "Users whose share of the last training set was capped (max_user_share).", registry=REGISTRY)
SUPERSEDED_VOTES = Gauge("rlhf_feedback_superseded_votes",
                         "Votes replaced by the same user's later vote on the same response (last training set).",
                         registry=REGISTRY)
LAST_SUCCESS = Gauge("rlhf_last_round_success_timestamp_seconds", "Unix time of the last round that finished.",
                     registry=REGISTRY)


def serve(port: int) -> int | None:
    if port < 0:
        return None
    server, _ = start_http_server(port, registry=REGISTRY)
    return server.server_port


def observe_hygiene(info: dict) -> None:
    """Feedback hygiene figures of the training set just loaded (workers/snapshots.py)."""
    DOWNWEIGHTED_USERS.set(info.get("downweighted_users", 0))
    CAPPED_USERS.set(info.get("capped_users", 0))
    SUPERSEDED_VOTES.set(info.get("superseded_votes", 0))


def observe_round(summary: dict) -> None:
    rm, ppo = summary.get("reward_model", {}), summary.get("ppo", {})
    if rm.get("train_loss") is not None:
        RM_LOSS.set(rm["train_loss"])
    if rm.get("heldout_accuracy") is not None:
        RM_ACCURACY.set(rm["heldout_accuracy"])
    PPO_REWARD.set(ppo.get("mean_reward", 0.0))
    PPO_KL.set(ppo.get("kl", 0.0))
    PPO_CLIPFRAC.set(ppo.get("clipfrac", 0.0))
    ROUNDS.labels("promoted" if summary.get("promoted") else "rejected").inc()
    ROUND_SECONDS.observe(summary.get("seconds", 0.0))
    LAST_SUCCESS.set_to_current_time()
