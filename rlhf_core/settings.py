"""One settings object for every process (server, worker, beat, CLI).

Values come from, in order of precedence: command-line flags (the CLI passes them as keyword
arguments), `RLHF_*` environment variables, then the defaults below. `REDIS_URL` is accepted as
an alias of `RLHF_REDIS_URL`.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from training.config import GateSampling, GateThresholds, PPOConfig, RewardConfig

# Flat names of earlier releases -> their nested names (a process given an old name refuses to start).
RENAMED = {
    "RLHF_PPO_STEPS": "RLHF_PPO__STEPS", "RLHF_PPO_BATCH_SIZE": "RLHF_PPO__ROLLOUT_BATCH_SIZE",
    "RLHF_PPO_MAX_NEW_TOKENS": "RLHF_PPO__MAX_NEW_TOKENS", "RLHF_PPO_LR": "RLHF_PPO__LR",
    "RLHF_PPO_TEMPERATURE": "RLHF_PPO__TEMPERATURE", "RLHF_PPO_MISSING_EOS_PENALTY": "RLHF_PPO__MISSING_EOS_PENALTY",
    "RLHF_PPO_ENT_COEF": "RLHF_PPO__ENT_COEF", "RLHF_KL_COEF": "RLHF_PPO__INIT_KL_COEF",
    "RLHF_ADAPTIVE_KL": "RLHF_PPO__ADAPTIVE_KL", "RLHF_KL_TARGET": "RLHF_PPO__KL_TARGET",
    "RLHF_REWARD_EPOCHS": "RLHF_REWARD__EPOCHS", "RLHF_REWARD_LR": "RLHF_REWARD__LR",
    "RLHF_PPO_MICRO_BATCH_SIZE": "RLHF_PPO__MICRO_BATCH_SIZE",
}
# Fields of the nested configs that every round fills from top-level settings (RLHF_SEED, RLHF_DEVICE).
ROUND_FILLED = {"ppo": ("seed", "norm_seed", "device"), "reward": ("seed", "device")}
# The promotion gate's thresholds and measurement, each a flat setting: field of training.config's
# GateThresholds / GateSampling -> setting. Their defaults are the truth; the settings below read them.
GATE_THRESHOLD_SETTINGS = {
    "min_judge_accuracy": "gate_min_judge_accuracy", "win_margin": "gate_win_margin",
    "min_win_rate": "gate_min_win_rate", "min_reward_gain": "gate_min_reward_gain", "kl_bound": "kl_bound",
    "max_eos_drop": "gate_max_eos_drop", "max_length_ratio": "gate_max_length_ratio",
    "min_distinct_ratio": "gate_min_distinct_ratio",
}
GATE_SAMPLING_SETTINGS = {"samples_per_prompt": "gate_samples_per_prompt", "confidence": "gate_win_confidence"}
_GATE, _SAMPLING = GateThresholds(), GateSampling()


class Settings(BaseSettings):
    """Configuration of rlhf-serve. Each field maps to the env var `RLHF_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="RLHF_", extra="ignore", use_attribute_docstrings=True,
                                      env_parse_none_str="none", env_nested_delimiter="__")

    # --- network -----------------------------------------------------------------------------
    host: str = "0.0.0.0"
    """Address the gRPC server binds to."""
    port: int = 50051
    """gRPC port; 0 picks a free one (the chosen port is logged)."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics HTTP endpoint; 0 picks a free one; -1 disables it."""
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("RLHF_REDIS_URL", "REDIS_URL"),
    )
    """Redis holding generation records, the feedback stream, the current-version pointer and the
    Celery broker. Plain `REDIS_URL` is accepted too."""
    key_prefix: str = "rlhf:"
    """Prefix of every Redis key this deployment uses (run several deployments on one Redis)."""

    # --- model registry ----------------------------------------------------------------------
    registry: Path = Path("var/registry")
    """Directory of immutable model versions (shared by servers and workers, e.g. a PVC)."""
    base_model: Path | None = None
    """A local Hugging Face causal-LM directory to register as version 1 instead of building the
    built-in model (used by `bootstrap` only when the registry is empty)."""
    device: str = "auto"
    """Torch device for serving and training: auto (cuda when present, else cpu), cpu, cuda, cuda:N."""
    cudnn_attention: bool = False
    """Let torch's attention use cuDNN's kernels on CUDA (servers and workers; no effect on CPU). Off: torch
    2.11 routes masked attention to cuDNN first on Hopper and newer GPUs, and cuDNN builds an execution plan
    per new shape, which a decoding step's growing key/value length is at every step."""
    cpu_packed_weights: bool = True
    """CPU serving (float32): decoding steps of 2-32 rows multiply by oneDNN-packed copies of the linear
    weights, where MKL's GEMM is slow for a few rows on some CPUs (measured on AMD Zen 4: an 86M model's step
    of 15 rows 1.66x faster, the server at 16 clients 1.41-1.43x); one sequence's steps and prefills of more than
    32 tokens keep the dense weights. Costs one more copy of the linear weights in memory. No effect on CUDA."""
    model_poll_s: float = 2.0
    """How often a server re-reads the current-version pointer (besides on every model event)."""
    model_retry_max_s: float = 300.0
    """Longest back-off before a server retries a version it refused (the back-off doubles from
    `model_poll_s`); a retry needs the pointer set to that version again or its files changed."""
    heartbeat_s: float = 5.0
    """How often a server records what it serves in Redis (`models list` shows live servers; a
    heartbeat older than 3 intervals counts as gone)."""

    # --- generation --------------------------------------------------------------------------
    max_batch_size: int = 16
    """Most sequences (candidates) decoded together in one step (continuous batching: rows join and leave per step)."""
    batch_wait_ms: float = 5.0
    """How long an idle engine waits after the first request arrives, to prefill a burst together."""
    max_tokens_in_flight: int = 65536
    """Most tokens (prompt + max_new_tokens, per candidate) the running batch may hold in its KV cache."""
    prefill_step_ratio: float = 0.0
    """If > 0: while candidates are decoding, prompts prefilled per step take at most about this many decoding steps' time (0: off; measured slower on CPU, see the serving benchmark)."""
    share_prefill: bool = True
    """Candidates with the same prompt (a call's n candidates, identical prompts joining in one step) share one
    prefill forward pass, each with its own copy of the KV cache (compute shared, not memory)."""
    prompt_cache_mb: float = Field(default=64.0, ge=0.0)
    """Memory for prompts prefilled before (their KV cache and first-token logits, per model version, least recently
    used out first): a prompt asked again on the same version joins by a copy instead of a forward pass, and one that
    shares at least 16 leading tokens with a kept prompt (a system prompt, earlier turns) runs only the rest (with
    `share_prefill`). 0: off. One entry holds layers x 2 x hidden x prompt tokens values (74 KB a token on the 86M
    GPT-2 shape in float32) plus the vocabulary's logits."""
    kv_grow_columns: int = Field(default=64, ge=0, le=4096)
    """Spare columns a decoding batch's KV cache keeps per layer, so that each step writes its keys and values in
    place instead of copying the whole cache (transformers' `torch.cat`); 0: the model's own cache (measured: README,
    "Serving")."""
    prefill_first: bool = False
    """Requests that arrive while others are prefilled are prefilled too before the running batch's next step
    (once per step, so running rows still advance every iteration); see the serving benchmark's TTFT A/B."""
    max_queue: int = 256
    """Most requests waiting for a batch; beyond this Generate answers RESOURCE_EXHAUSTED."""
    max_prompt_chars: int = 8000
    """Longest prompt accepted, in characters (token length is checked against the model too)."""
    default_max_new_tokens: int = 64
    """max_new_tokens when a request leaves it 0."""
    max_new_tokens_limit: int = 512
    """Largest max_new_tokens a request may ask for."""
    loaded_versions: int = 3
    """How many model versions a server keeps in memory (current + pinned ones, LRU)."""

    # --- feedback store ----------------------------------------------------------------------
    generation_ttl_s: int = 7 * 24 * 3600
    """Retention of generation records: feedback on an older response gets NOT_FOUND."""
    idempotency_ttl_s: int = 7 * 24 * 3600
    """How long an idempotency key is remembered."""
    recent_prompts: int = 2000
    """How many recent real prompts are kept for PPO rollouts."""
    feedback_rate_per_s: float = 10.0
    """Per-user feedback rate limit: tokens refilled per second (a token bucket in Redis; anonymous
    feedback has one bucket per response). Beyond it SubmitFeedback answers RESOURCE_EXHAUSTED with a
    retry-after-ms hint. 0 disables the limit."""
    feedback_burst: int = 100
    """Per-user feedback rate limit: bucket size (feedback one user may send at once)."""
    feedback_stream_keep: int = 10000
    """Newest feedback stream entries kept in Redis after a snapshot has durably saved and acknowledged
    them (older ones live in the registry's datasets/ files); entries not yet snapshotted are never
    trimmed. -1: never trim."""

    # --- auth --------------------------------------------------------------------------------
    api_tokens: str = ""
    """Comma-separated bearer tokens required on PolicyService calls; empty: open."""
    admin_token: str = ""
    """Bearer token required on AdminService calls. The server refuses to start without one
    unless `insecure_admin` is set."""
    insecure_admin: bool = False
    """Development only (`--insecure-admin`): start with AdminService open when no admin token
    is set. Without it, a server lacking `RLHF_ADMIN_TOKEN` refuses to start."""

    # --- TLS ---------------------------------------------------------------------------------
    tls_cert: Path | None = None
    """PEM certificate (chain) of the gRPC server; with `tls_key`, gRPC is served over TLS only."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    tls_client_ca: Path | None = None
    """PEM CA bundle: when set (with TLS), clients must present a certificate it signed (mTLS)."""
    health_port: int = -1
    """Plaintext port serving only grpc.health.v1 (for Kubernetes gRPC probes, which cannot speak
    TLS); 0 picks a free one; -1 disables it."""

    # --- training loop (workers) -------------------------------------------------------------
    min_new_feedback: int = 32
    """A scheduled round runs only when at least this many new feedback items are pending."""
    schedule_s: float = 300.0
    """How often beat checks whether a round should run."""
    round_lock_ttl_s: float = 60.0
    """Expiry of the one-round-at-a-time lock; a running stage extends it every third of this,
    so a killed worker's lock lapses after at most this long."""
    round_handoff_ttl_s: float = 3600.0
    """Expiry of the round lock while the round's next task waits in a queue (e.g. for a GPU
    worker): set when the round starts and when a stage hands off; longer than any queue wait."""
    retention_keep_refused: int = 5
    """Registry retention: how many of the newest refused (not promoted) versions to keep."""
    retention_schedule_s: float = 3600.0
    """How often beat prunes the registry (keeps the current version, its ancestors back to the
    SFT reference, the newest refused ones); 0 disables the scheduled prune."""
    round_heartbeat_timeout_s: float = 180.0
    """A round whose heartbeat (refreshed every third of `round_lock_ttl_s` while a stage runs) is
    older than this, and whose lock has lapsed, is abandoned: recorded as failed, its lock freed,
    its scratch directory removed. Keep it above `round_lock_ttl_s` and far below Celery's 1 h
    visibility timeout."""
    round_reap_interval_s: float = 30.0
    """How often beat runs the reaper of abandoned rounds (a round is also reaped when the next
    one is triggered). A dead round is recorded within timeout + interval."""
    train_window: int = 5000
    """Most recent feedback items a round trains the reward model on."""
    max_user_share: float = 0.2
    """Most of a round's training weight one user may hold (their items are scaled down beyond it).
    With fewer than 1/max_user_share users the cap is 1/(number of users). 1 disables it."""
    voter_weighting: bool = True
    """Weight each user's feedback by their agreement with the other users on shared prompts and
    responses (training/voters.py): a minority voting against the crowd is down-weighted."""
    kl_bound: float = _GATE.kl_bound
    """Promotion gate: a candidate with mean KL to the SFT reference above this (nats per
    response) is not promoted."""
    round_kl_budget_share: float = 0.9
    """A round's PPO ends at the first rollouts whose mean KL to the SFT reference exceeds this share of
    `RLHF_KL_BOUND` and returns the last policy whose rollouts were within it; 0: off. Rounds stop near
    the bound instead of overshooting it and being refused by the gate."""
    gate_min_reward_gain: float = _GATE.min_reward_gain
    """Promotion gate: the candidate's mean score by the judge (the reward model trained on the
    other half of the feedback, never used by PPO) must exceed its parent's by more than this
    (negative values let a slightly worse candidate through; useful in tests)."""
    gate_min_judge_accuracy: float = _GATE.min_judge_accuracy
    """Promotion gate: the judge's accuracy on the feedback it never trained on (its held-out split
    and the other half) must be at least this; a judge near chance (0.5) cannot tell a better
    candidate from a worse one, so nothing is promoted on its word."""
    judge_ensemble: int = Field(default=1, ge=1, le=16)
    """Promotion gate: reward models trained on the judge's half of the feedback, each with its own seed;
    the gate judges with the mean of their scores and records each one's win rate and the share of
    prompts they disagree on. 1: one judge. Each member costs one more reward-model training per round
    (3: a judge more accurate by 0.017 that changed 1 of 21 decisions; README, "Does it learn?")."""
    policy_rm_ensemble: int = Field(default=1, ge=1, le=16)
    """PPO's reward model: reward models trained on the policy's half of the feedback, each with its own seed;
    PPO's reward is the mean of their scores (Coste et al. 2023: an ensemble is harder to over-optimise than
    one of its members), and the value model starts from member 0's trunk. 1: one reward model. Full
    fine-tuning rounds only: a LoRA round trains one reward adapter and logs that it ignores this. Each member
    costs one more reward-model training per round and one more reward forward per rollout batch."""
    gate_win_margin: float = _GATE.win_margin
    """Promotion gate: the lower confidence bound of the candidate's win rate against its parent
    (judged on held-out prompts) must exceed 0.5 + this. Negative: a non-inferiority test (the
    candidate is, with that confidence, at most this much worse), with `RLHF_GATE_MIN_WIN_RATE` asking
    that the judge still prefer it."""
    gate_min_win_rate: float = _GATE.min_win_rate
    """Promotion gate: the candidate's win rate against its parent (the point estimate) must exceed
    this. Binds only with a negative `RLHF_GATE_WIN_MARGIN` (0 turns it off, e.g. in tests)."""
    gate_win_confidence: float = _SAMPLING.confidence
    """Promotion gate: one-sided confidence of the win rate's bootstrap lower bound (prompts are
    resampled)."""
    gate_samples_per_prompt: int = _SAMPLING.samples_per_prompt
    """Promotion gate: responses sampled per held-out prompt from candidate, parent and SFT
    reference (at `RLHF_PPO__TEMPERATURE`, the serving temperature). 16, not 4: with 4 the win rate's
    bound refused real gains (learning benchmark: mean win rate 0.781 -> 0.822 over 3 seeds)."""
    gate_max_eos_drop: float = _GATE.max_eos_drop
    """Promotion gate: the candidate's share of responses that end (EOS within the token budget)
    may fall at most this far below the parent's."""
    gate_max_length_ratio: float = _GATE.max_length_ratio
    """Promotion gate: the candidate's mean response length must stay within 1/x..x times the SFT
    reference's."""
    gate_min_distinct_ratio: float = _GATE.min_distinct_ratio
    """Promotion gate: the candidate's distinct-2 on held-out prompts must be at least this share of
    the SFT reference's (a collapse guard). 0.55, not the 0.5 collapse bound the learning benchmark
    checks: the gate measures on its own samples, and at 0.5 a version at 0.50x passed it. Not 0.6 either:
    the versions 0.55 let through (0.56-0.59x here) measured 0.61-0.67x by the benchmark, and the worst seed
    went from 0.723 to 0.805 (learning benchmark, 11-12 rounds, 3 seeds: mean 0.825 -> 0.845)."""
    seed: int = 0
    """Seed of training rounds (a round's seed is seed + round number)."""
    eval_prompts: int = 48
    """Most prompts scored at the promotion gate: the shipped held-out prompts first, then those of
    `RLHF_GATE_PROMPTS_FILE`."""
    gate_prompts_file: FilePath | None = None
    """A file of prompts, one per line, that the promotion gate judges candidates on beside the shipped
    held-out prompts (up to `RLHF_EVAL_PROMPTS` in all) and that PPO's rollouts never sample: your own
    evaluation set. The gate's win-rate bound resamples prompts, so more prompts give it more power."""
    reserved_prompts_file: FilePath | None = None
    """A file of prompts, one per line, that PPO's rollouts never sample, as they never sample the shipped
    held-out prompts, though users may send them: an evaluation set kept out of online training."""
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    """PPO of each round: the fields of `training.config.PPOConfig` (its defaults are the truth), each
    set by `RLHF_PPO__<FIELD>`; `seed`, `norm_seed` and `device` come from `RLHF_SEED` and `RLHF_DEVICE`."""
    reward: RewardConfig = Field(default_factory=RewardConfig)
    """Reward-model (and judge) training of each round: the fields of `training.config.RewardConfig`, each
    set by `RLHF_REWARD__<FIELD>`; `seed` and `device` come from `RLHF_SEED` and `RLHF_DEVICE`."""
    # --- LoRA rounds (issue 7) ---------------------------------------------------------------
    finetune: str = "auto"
    """How a round fine-tunes: lora (an adapter on one shared base; versions are adapters),
    full (every weight; versions are full copies) or auto (LoRA for bases of at least
    `lora_auto_min_params` parameters, full below)."""
    lora_auto_min_params: int = 20_000_000
    """Parameter count from which `finetune=auto` picks LoRA (measured: README, "LoRA rounds")."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA alpha (updates are scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """LoRA dropout (0: PPO runs with dropout off)."""
    lora_target_modules: str = ""
    """Comma-separated module names to adapt; empty detects them from the architecture (c_attn for
    GPT-2; q_proj,k_proj,v_proj,o_proj for Llama/Qwen/Mistral; query_key_value for GPT-NeoX)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of LoRA rounds (CUDA only: less memory, ~30% slower)."""
    worker_metrics_port: int = 9091
    """Prometheus port of a worker process; 0 picks a free one; -1 disables it."""

    # --- logging -----------------------------------------------------------------------------
    log_level: str = "INFO"
    """Python logging level."""

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_settings(cls, data: Any) -> Any:
        """A flat PPO/reward setting of earlier releases would otherwise be ignored without a word."""
        given = [f"RLHF_{k.upper()}" for k in (data if isinstance(data, dict) else {})] + list(os.environ)
        renamed = [f"{old} is now {new}" for old, new in RENAMED.items() if old in given]
        if renamed:
            raise ValueError("renamed settings (PPO and reward-model settings are nested since the config "
                             "dataclasses became their one source): " + "; ".join(renamed))
        return data

    @property
    def stream_key(self) -> str:
        """The Redis Stream of accepted feedback events."""
        return f"{self.key_prefix}feedback"


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings under a class's attributes (`x: int = 0` then `\"\"\"...\"\"\"`), by attribute name."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _row(env: str, default: Any, doc: str) -> str:
    default = default if default is not None else ""
    return f"| `{env}` | `{default}` | {' '.join(doc.split())} |"


def settings_table() -> str:
    """The configuration reference as a Markdown table (kept in the README); the nested PPO and
    reward-model configs list one row per dataclass field (`RLHF_PPO__LR`), with its docstring."""
    lines = ["| env var | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name in ROUND_FILLED:
            config = field.default_factory()
            docs = attribute_docs(type(config))
            lines += [_row(f"RLHF_{name.upper()}__{f.name.upper()}", getattr(config, f.name), docs.get(f.name, ""))
                      for f in fields(config) if f.name not in ROUND_FILLED[name]]
            continue
        env = "RLHF_" + name.upper() + (" / REDIS_URL" if name == "redis_url" else "")
        lines.append(_row(env, field.default, field.description or ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
