"""The state of one training round as it crosses the stages (workers/rounds.py).

    begin -> snapshot -> train_reward -> ppo -> evaluate -> publish

Each stage takes a `RoundState` and returns a new one with its own part filled in. It becomes a
JSON dict only at the Celery boundary (workers/tasks.py: `to_dict` / `from_dict`) and in the round
record that `publish` (or a failure, or the reaper) pushes to Redis (`record`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class RoundState:
    """What one round knows so far; a stage's part is None until that stage ran."""

    round_id: str
    round_number: int
    parent: str
    """The version the candidate is trained from (the current version when the round began)."""
    reference: str
    """The SFT reference of PPO's KL penalty and of the gate's KL figure."""
    started_at: float
    """Wall-clock time the round began (time.time())."""
    seed: int
    """The round's seed: settings.seed + round_number."""
    trigger: str = ""
    """Why the round runs (schedule, `rlhf-serve train --now`, TriggerRound)."""
    finetune: str = "full"
    """How the round fine-tunes: "full" (every weight) or "lora" (an adapter on `base_version`; issue 7)."""
    base_version: str | None = None
    """The full version whose weights the parent runs on (the parent itself for a full version)."""
    base_parameters: int | None = None
    """Parameter count of the base, when the round had to count it to choose LoRA or full."""
    # --- snapshot
    snapshot: dict | None = None
    """The feedback snapshot it trains on: {"path", "count"}."""
    data: dict | None = None
    """The training set's figures (feedback ids, comparisons, ratings, prompts, weights)."""
    # --- train_reward
    reward_model: dict | None = None
    """Figures of the policy reward model (the one PPO optimises against)."""
    judge: dict | None = None
    """Figures of the judge (trained on the other half of the prompts; the gate only)."""
    # --- ppo
    ppo: dict | None = None
    """PPO's last-step figures, steps and seconds."""
    ppo_history: list[dict] | None = None
    """Every PPO step's figures (dropped from the round record)."""
    # --- evaluate
    evaluation: dict | None = None
    """Samples' summaries of candidate, parent and reference, and the gate's figures."""
    # --- publish
    version: str | None = None
    promoted: bool | None = None
    reason: str | None = None
    """The gate's reason for its decision."""
    checks: list[dict] | None = None
    seconds: float | None = None
    """Wall time of the whole round."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form that travels between Celery tasks."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundState:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"not a RoundState: unknown fields {sorted(unknown)}")
        return cls(**data)

    def record(self) -> dict[str, Any]:
        """The round's entry in the Redis list of rounds: every part set, without the PPO history."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "ppo_history"}
