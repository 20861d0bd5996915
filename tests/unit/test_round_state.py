"""RoundState: the typed state of a round, a JSON dict only at the Celery boundary."""

from __future__ import annotations

import json

import pytest

from workers.state import RoundState


def test_json_round_trip_keeps_every_part():
    state = RoundState(round_id="r1", round_number=3, parent="v0002", reference="v0001", started_at=1.5, seed=3,
                       trigger="schedule", data={"num_prompts": 4}, ppo={"kl": 0.5}, ppo_history=[{"kl": 0.5}])
    again = RoundState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state and again.ppo_history == [{"kl": 0.5}] and again.evaluation is None


def test_record_drops_unset_parts_and_the_ppo_history():
    state = RoundState(round_id="r1", round_number=3, parent="v0002", reference="v0001", started_at=1.5, seed=3,
                       ppo={"kl": 0.5}, ppo_history=[{"kl": 0.5}], version="v0003", promoted=False, reason="kl: 12 > 10")
    record = state.record()
    assert record["version"] == "v0003" and record["promoted"] is False and record["reason"] == "kl: 12 > 10"
    assert "ppo_history" not in record and "evaluation" not in record and record["ppo"] == {"kl": 0.5}


def test_a_dict_that_is_not_a_round_state_is_refused():
    with pytest.raises(ValueError, match="unknown fields"):
        RoundState.from_dict({"round_id": "r1", "bogus": 1})


def test_the_version_records_the_diversity_floors_last_step():
    """With the diversity floor, lambda moves from step to step: the round's summary keeps the last step's weight and
    rollout distinct-2 ratio (0 when no step logged them: no floor), and the entropy bonus it ran with."""
    from training.config import PPOConfig
    from workers.rounds import _ppo_summary

    state = RoundState(round_id="r1", round_number=3, parent="v0002", reference="v0001", started_at=1.5, seed=3)
    cfg = PPOConfig(ent_coef=0.001, diversity_floor=0.7)
    history = [{"kl": 1.0, "repeat_coef": 0.1, "distinct_2_ratio": 0.6},
               {"kl": 2.0, "repeat_coef": 0.2, "distinct_2_ratio": 0.65}]
    ppo = _ppo_summary(state, history, 0.0, cfg).ppo
    assert (ppo["repeat_coef"], ppo["distinct_2_ratio"], ppo["ent_coef"]) == (0.2, 0.65, 0.001)
    ppo = _ppo_summary(state, [{"kl": 1.0}], 0.0, cfg).ppo
    assert (ppo["repeat_coef"], ppo["distinct_2_ratio"]) == (0.0, 0.0)
