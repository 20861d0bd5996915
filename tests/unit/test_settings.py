"""Settings nest the training dataclasses: one source of the PPO and reward-model defaults."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from pydantic import ValidationError

from rlhf_core.settings import Settings, settings_table
from training.config import PPOConfig, RewardConfig


def test_defaults_are_the_dataclasses_and_the_tuned_values():
    s = Settings()
    assert asdict(s.ppo) == asdict(PPOConfig()) and asdict(s.reward) == asdict(RewardConfig())
    assert (s.ppo.lr, s.ppo.rollout_batch_size, s.ppo.temperature, s.ppo.max_new_tokens, s.ppo.steps) == \
        (5e-5, 32, 1.0, 64, 16)
    assert (s.ppo.init_kl_coef, s.ppo.missing_eos_penalty, s.ppo.ent_coef, s.ppo.adaptive_kl) == (0.15, -2.0, 0.0, False)
    assert (s.reward.epochs, s.reward.lr) == (2, 3e-4)


def test_nested_env_vars_set_single_fields(monkeypatch):
    monkeypatch.setenv("RLHF_PPO__LR", "1e-5")
    monkeypatch.setenv("RLHF_PPO__MISSING_EOS_PENALTY", "none")
    monkeypatch.setenv("RLHF_REWARD__EPOCHS", "1")
    s = Settings(ppo={"steps": 3})
    assert (s.ppo.lr, s.ppo.missing_eos_penalty, s.ppo.steps, s.ppo.rollout_batch_size) == (1e-5, None, 3, 32)
    assert (s.reward.epochs, s.reward.lr) == (1, 3e-4)


def test_the_diversity_floor_is_off_unless_set_and_refused_outside_0_to_1(monkeypatch):
    assert Settings().ppo.diversity_floor is None
    monkeypatch.setenv("RLHF_PPO__DIVERSITY_FLOOR", "0.7")
    assert Settings().ppo.diversity_floor == 0.7
    monkeypatch.setenv("RLHF_PPO__DIVERSITY_FLOOR", "none")
    assert Settings().ppo.diversity_floor is None
    monkeypatch.setenv("RLHF_PPO__DIVERSITY_FLOOR", "1.5")
    with pytest.raises(ValidationError, match="diversity_floor must be in"):
        Settings()


def test_invalid_nested_value_is_refused_with_the_dataclass_check(monkeypatch):
    monkeypatch.setenv("RLHF_PPO__ROLLOUT_BATCH_SIZE", "6")
    with pytest.raises(ValidationError, match="mini_batch_size must divide rollout_batch_size"):
        Settings()


@pytest.mark.parametrize("old,new", [("RLHF_PPO_STEPS", "RLHF_PPO__STEPS"), ("RLHF_KL_COEF", "RLHF_PPO__INIT_KL_COEF"),
                                     ("RLHF_REWARD_LR", "RLHF_REWARD__LR")])
def test_flat_names_of_earlier_releases_are_refused_with_their_new_name(monkeypatch, old, new):
    monkeypatch.setenv(old, "3")
    with pytest.raises(ValidationError, match=f"{old} is now {new}"):
        Settings()


def test_settings_table_lists_nested_fields_with_their_docstrings():
    table = settings_table()
    assert "| `RLHF_PPO__LR` | `5e-05` | Adam learning rate of policy and value model. |" in table
    assert "| `RLHF_REWARD__EPOCHS` | `2` |" in table and "| `RLHF_SEED` | `0` |" in table
    assert "RLHF_PPO__DEVICE" not in table and "RLHF_PPO__SEED" not in table and "RLHF_PPO_STEPS" not in table


def test_lora_micro_batch_is_a_ppo_setting(monkeypatch):
    from workers.lora_rounds import finetune_config

    assert finetune_config(Settings()).micro_batch_size is None  # 0: the whole mini-batch
    monkeypatch.setenv("RLHF_PPO__MICRO_BATCH_SIZE", "2")
    assert finetune_config(Settings()).micro_batch_size == 2


def test_a_rounds_kl_budget_is_a_share_of_the_gates_bound_unless_set(monkeypatch):
    from workers.rounds import Context, ppo_config
    from workers.state import RoundState

    state = RoundState(round_id="r1", round_number=1, parent="v0001", reference="v0001", started_at=0.0, seed=3)
    s = Settings(redis_url="redis://127.0.0.1:6379/0", kl_bound=8.0)
    assert (s.round_kl_budget_share, s.ppo.kl_budget) == (0.9, None)
    assert ppo_config(Context(s), state).kl_budget == pytest.approx(7.2)
    assert ppo_config(Context(s.model_copy(update={"round_kl_budget_share": 0.0})), state).kl_budget is None
    monkeypatch.setenv("RLHF_PPO__KL_BUDGET", "5.5")
    assert ppo_config(Context(Settings(kl_bound=8.0)), state).kl_budget == 5.5


def test_every_gate_threshold_is_one_setting_whose_default_is_the_gates(monkeypatch):
    from dataclasses import fields

    from rlhf_core.settings import GATE_SAMPLING_SETTINGS, GATE_THRESHOLD_SETTINGS
    from training.config import GateSampling, GateThresholds
    from workers.rounds import Context, gate_sampling, gate_thresholds
    from workers.state import RoundState

    assert set(GATE_THRESHOLD_SETTINGS) == {f.name for f in fields(GateThresholds)}  # none forgotten
    assert gate_thresholds(Settings()) == GateThresholds()
    monkeypatch.setenv("RLHF_GATE_MIN_DISTINCT_RATIO", "0.7")
    monkeypatch.setenv("RLHF_GATE_SAMPLES_PER_PROMPT", "8")
    monkeypatch.setenv("RLHF_KL_BOUND", "8")
    s = Settings(redis_url="redis://127.0.0.1:6379/0", gate_win_confidence=0.8)
    assert (gate_thresholds(s).min_distinct_ratio, gate_thresholds(s).kl_bound) == (0.7, 8.0)
    state = RoundState(round_id="r1", round_number=1, parent="v0001", reference="v0001", started_at=0.0, seed=3)
    sampling = gate_sampling(Context(s), state)
    assert (sampling.samples_per_prompt, sampling.confidence, sampling.seed) == (8, 0.8, 3)
    assert set(GATE_SAMPLING_SETTINGS) <= {f.name for f in fields(GateSampling)}
    assert "| `RLHF_GATE_SAMPLES_PER_PROMPT` | `16` |" in settings_table()


def test_a_missing_reserved_prompts_file_is_refused_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_RESERVED_PROMPTS_FILE", str(tmp_path / "nope.txt"))
    with pytest.raises(ValidationError, match="reserved_prompts_file"):
        Settings()


def test_a_missing_gate_prompts_file_is_refused_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_GATE_PROMPTS_FILE", str(tmp_path / "nope.txt"))
    with pytest.raises(ValidationError, match="gate_prompts_file"):
        Settings()


@pytest.mark.parametrize("members", ["0", "17"])
@pytest.mark.parametrize("name", ["judge_ensemble", "policy_rm_ensemble"])
def test_an_ensemble_outside_1_to_16_is_refused_at_start(monkeypatch, members, name):
    monkeypatch.setenv(f"RLHF_{name.upper()}", members)
    with pytest.raises(ValidationError, match=name):
        Settings()


@pytest.mark.parametrize("columns", ["-1", "4097"])
def test_kv_grow_columns_outside_0_to_4096_are_refused_at_start(monkeypatch, columns):
    monkeypatch.setenv("RLHF_KV_GROW_COLUMNS", columns)
    with pytest.raises(ValidationError, match="kv_grow_columns"):
        Settings()


def test_the_servers_kv_cache_takes_its_default_from_the_setting(monkeypatch):
    from service.decoder import GROW_COLUMNS
    monkeypatch.delenv("RLHF_KV_GROW_COLUMNS", raising=False)
    assert Settings().kv_grow_columns == GROW_COLUMNS > 0
