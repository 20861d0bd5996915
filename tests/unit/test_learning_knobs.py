"""The learning benchmark's round-setting flags reach the worker as the service's own settings."""

from __future__ import annotations

import pytest

from benchmarks.learning.__main__ import build_parser, training_settings
from benchmarks.learning.stack import TRAINING_KNOBS, effective_training, worker_env
from rlhf_core.settings import Settings


def _another(value: object) -> object:
    """A valid value other than the default ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, float) and 0 < value <= 1:
        return value / 2
    return value * 2 if value else 1


def test_every_knob_is_a_setting_the_worker_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = effective_training({})
    assert set(defaults) == set(TRAINING_KNOBS) | {"seed"}
    for knob in TRAINING_KNOBS:
        value = defaults[knob]
        changed = _another(value)
        env = worker_env({knob: changed})
        (name, text), = env.items()
        with monkeypatch.context() as m:
            m.setenv(name, text)
            s = Settings()
        assert effective_training({knob: changed})[knob] == changed, knob
        got = s.model_dump()
        path = name.removeprefix("RLHF_").lower().split("__")
        for part in path:
            got = got[part]
        assert got == changed, (knob, name)


def test_kl_budget_backoff_flag_sets_the_ppo_backoff() -> None:
    args = build_parser().parse_args(["--kl-budget-backoff", "1.25"])
    assert worker_env(training_settings(args)).get("RLHF_PPO__KL_BUDGET_BACKOFF") == "1.25"
