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


def test_kl_round_step_flag_sets_the_ppo_step() -> None:
    args = build_parser().parse_args(["--kl-round-step", "2.5"])
    assert worker_env(training_settings(args)).get("RLHF_PPO__KL_ROUND_STEP") == "2.5"


def test_gate_prompts_flag_gives_the_gate_those_prompts_after_the_held_out_ones(tmp_path, monkeypatch) -> None:
    """`--gate-prompts 40`: the worker's gate judges on the 20 held-out prompts and then the 40 of gate_prompts.py
    (RLHF_EVAL_PROMPTS grows to 60 to fit), none of them a fresh evaluation prompt; an explicit
    `--gate-eval-prompts` still caps them."""
    from types import SimpleNamespace

    from benchmarks.learning.fresh_prompts import fresh_prompts
    from benchmarks.learning.gate_prompts import gate_prompts
    from benchmarks.learning.stack import Stack, StackConfig
    from training.text_format import heldout_prompts, train_prompts
    from workers.rounds import eval_prompts

    held, extra = heldout_prompts(), gate_prompts(40)
    assert len(set(extra)) == 40 and not set(extra) & set(held + train_prompts() + fresh_prompts())
    args = build_parser().parse_args(["--gate-prompts", "40"])
    stack = Stack(StackConfig(gate_prompts=gate_prompts(args.gate_prompts), training=training_settings(args)))
    stack.settings = Settings(registry=tmp_path / "registry")
    for name, value in stack.worker_environment().items():
        monkeypatch.setenv(name, value)
    assert eval_prompts(SimpleNamespace(settings=Settings())) == held + extra
    capped = build_parser().parse_args(["--gate-prompts", "40", "--gate-eval-prompts", "25"])
    assert training_settings(capped)["eval_prompts"] == 25
