"""Names of the Celery tasks and queues (the contract between senders and workers).

Senders (the admin RPC, the CLI) queue tasks by name, so they never import workers/.
"""

ROUND_TASK = "rlhf.round"
"""Starts one training round: snapshot feedback -> reward model -> PPO -> evaluate -> publish."""

DEFAULT_QUEUE = "default"
"""Light tasks: snapshots, evaluation bookkeeping, publishing, scheduling."""

GPU_QUEUE = "gpu"
"""Training tasks (reward model, PPO): run GPU workers with `-Q gpu`."""
