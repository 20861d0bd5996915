"""One settings object for every process (server, worker, beat, CLI).

Values come from, in order of precedence: command-line flags (the CLI passes them as keyword
arguments), `RLHF_*` environment variables, then the defaults below. `REDIS_URL` is accepted as
an alias of `RLHF_REDIS_URL`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of rlhf-serve. Each field maps to the env var `RLHF_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="RLHF_", extra="ignore", use_attribute_docstrings=True)

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

    # --- generation --------------------------------------------------------------------------
    max_batch_size: int = 16
    """Most sequences (candidates) decoded together in one batch."""
    batch_wait_ms: float = 5.0
    """How long the scheduler waits to fill a batch after the first request arrives."""
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

    # --- auth --------------------------------------------------------------------------------
    api_tokens: str = ""
    """Comma-separated bearer tokens required on PolicyService calls; empty: open."""
    admin_token: str = ""
    """Bearer token required on AdminService calls; empty: admin RPCs are open (dev only)."""

    # --- training loop (workers) -------------------------------------------------------------
    min_new_feedback: int = 32
    """A scheduled round runs only when at least this many new feedback items are pending."""
    schedule_s: float = 300.0
    """How often beat checks whether a round should run."""
    round_lock_ttl_s: float = 60.0
    """Expiry of the one-round-at-a-time lock; a running stage extends it every third of this,
    so a killed worker's lock lapses after at most this long."""
    train_window: int = 5000
    """Most recent feedback items a round trains the reward model on."""
    kl_bound: float = 10.0
    """Promotion gate: a candidate with mean KL to the SFT reference above this (nats per
    response) is not promoted."""
    gate_min_reward_gain: float = 0.0
    """Promotion gate: the candidate's mean reward-model score must exceed its parent's by more
    than this (negative values let a slightly worse candidate through; useful in tests)."""
    ppo_steps: int = 16
    """PPO iterations per round. (The training defaults are the ones that met the learning
    benchmark's targets on the built-in model: benchmarks/results/LEARNING.md.)"""
    reward_epochs: int = 2
    """Reward-model epochs per round."""
    seed: int = 0
    """Seed of training rounds (a round's seed is seed + round number)."""
    eval_prompts: int = 48
    """Held-out prompts scored at the promotion gate."""
    reward_lr: float = 3e-4
    """Reward-model learning rate."""
    ppo_lr: float = 5e-5
    """PPO learning rate (policy and value model)."""
    ppo_batch_size: int = 32
    """Rollouts per PPO step."""
    ppo_max_new_tokens: int = 64
    """Longest rollout response during PPO."""
    ppo_temperature: float = 1.0
    """Rollout (and log-prob) temperature of PPO. Keep it equal to the temperature clients sample
    at (the server's default is 1.0): PPO optimises the policy at this temperature."""
    kl_coef: float = 0.15
    """Initial coefficient of the per-token KL penalty against the SFT reference."""
    adaptive_kl: bool = False
    """Adapt the KL coefficient to hold `kl_target` (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target KL (nats per response) of the adaptive controller."""
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
    ppo_micro_batch_size: int = 0
    """Rows per forward/backward inside a PPO mini-batch (gradient accumulation, LoRA rounds);
    0: the whole mini-batch at once."""
    worker_metrics_port: int = 9091
    """Prometheus port of a worker process; 0 picks a free one; -1 disables it."""

    # --- logging -----------------------------------------------------------------------------
    log_level: str = "INFO"
    """Python logging level."""

    @property
    def stream_key(self) -> str:
        """The Redis Stream of accepted feedback events."""
        return f"{self.key_prefix}feedback"


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def settings_table() -> str:
    """The configuration reference as a Markdown table (kept in the README)."""
    lines = ["| env var | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = "RLHF_" + name.upper() + (" / REDIS_URL" if name == "redis_url" else "")
        default = field.default if field.default is not None else ""
        desc = (field.description or "").replace("\n", " ")
        lines.append(f"| `{env}` | `{default}` | {desc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
