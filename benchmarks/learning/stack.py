"""Start and stop a throw-away rlhf-serve stack for one benchmark run.

A :class:`Stack` owns

- a fresh registry directory (a temp dir unless one is given) whose version 1 is the SFT model:
  the built-in model (built once per seed and cached under ``benchmarks/.cache/sft-seed<N>``) or
  any local Hugging Face directory (e.g. the tests' tiny model);
- a unique Redis key prefix, deleted again on :meth:`Stack.stop`;
- the gRPC server, in-process on a background thread with its own event loop and a free port;
- one ``rlhf-serve worker`` subprocess (``rlhf_serve.local.CeleryChild``: solo pool, queues default and
  gpu; output appended to ``worker.log``) whose training hyper-parameters come from ``RLHF_*``
  environment variables (:func:`worker_env`).

The harness talks to the server only through its public gRPC API (``Stack.target``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from benchmarks.learning.fresh_prompts import fresh_prompts

if TYPE_CHECKING:  # imported where the server starts (service.app pulls in torch and grpc)
    from service.app import BackgroundServer

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "benchmarks" / ".cache"

# Round-size knobs the CLI exposes -> the setting each one sets: (nested config, field) for the PPO and
# reward-model configs (training/config.py, env RLHF_PPO__<FIELD> / RLHF_REWARD__<FIELD>), else (None, setting).
KNOB_SETTINGS = {
    "ppo_steps": ("ppo", "steps"), "ppo_batch_size": ("ppo", "rollout_batch_size"),
    "ppo_max_new_tokens": ("ppo", "max_new_tokens"), "ppo_lr": ("ppo", "lr"), "ppo_temperature": ("ppo", "temperature"),
    "kl_coef": ("ppo", "init_kl_coef"), "adaptive_kl": ("ppo", "adaptive_kl"), "kl_target": ("ppo", "kl_target"),
    "reward_epochs": ("reward", "epochs"), "reward_lr": ("reward", "lr"), "eval_prompts": (None, "eval_prompts"),
    "gate_min_reward_gain": (None, "gate_min_reward_gain"), "kl_bound": (None, "kl_bound"),
    "train_window": (None, "train_window"), "ent_coef": ("ppo", "ent_coef"),
    "diversity_floor": ("ppo", "diversity_floor"), "diversity_lr": ("ppo", "diversity_lr"),
    "repeat_coef_max": ("ppo", "repeat_coef_max"),
    "gate_min_distinct_ratio": (None, "gate_min_distinct_ratio"), "gate_max_length_ratio": (None, "gate_max_length_ratio"),
    "gate_win_confidence": (None, "gate_win_confidence"), "gate_win_margin": (None, "gate_win_margin"),
    "round_kl_budget_share": (None, "round_kl_budget_share"),
    "gate_samples_per_prompt": (None, "gate_samples_per_prompt"),
    "kl_budget_retries": ("ppo", "kl_budget_retries"), "kl_budget_backoff": ("ppo", "kl_budget_backoff"),
    "kl_budget_z": ("ppo", "kl_budget_z"), "kl_round_step": ("ppo", "kl_round_step"),
    "judge_ensemble": (None, "judge_ensemble"),
    "policy_rm_ensemble": (None, "policy_rm_ensemble"),
}
TRAINING_KNOBS = tuple(KNOB_SETTINGS)


def _env_name(knob: str) -> str:
    group, name = KNOB_SETTINGS.get(knob, (None, knob))
    return f"RLHF_{group.upper()}__{name.upper()}" if group else f"RLHF_{name.upper()}"


def worker_env(training: dict[str, Any]) -> dict[str, str]:
    """``RLHF_*`` variables for the non-None entries of ``training`` (bools as true/false)."""
    out = {}
    for name, value in training.items():
        if value is None:
            continue
        out[_env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def effective_training(training: dict[str, Any]) -> dict[str, Any]:
    """Every round-size setting the worker runs with (by knob name): its defaults under ``training``."""
    from rlhf_core.settings import Settings
    given: dict[str, Any] = {}
    for knob, value in training.items():
        group, name = KNOB_SETTINGS.get(knob, (None, knob))
        if value is not None and (group or name in Settings.model_fields):
            (given.setdefault(group, {}) if group else given)[name] = value
    base = Settings(**given)
    values = {knob: getattr(getattr(base, group) if group else base, name) for knob, (group, name) in KNOB_SETTINGS.items()}
    return values | {"seed": base.seed}


def builtin_sft_dir(seed: int = 0, cache: Path = CACHE, log: Callable[[str], Any] = print) -> Path:
    """The built-in SFT model for ``seed``, built on first use (minutes on CPU) and cached.

    Built with one torch thread: a float sum's order depends on the thread count, so a build with two
    threads gives other weights (and other learning results) than one with one; with one, every machine
    that reproduces a committed result starts from the same bytes."""
    import torch

    from training.sft import SFTConfig, build_default_model
    out = cache / f"sft-seed{seed}"
    if (out / "config.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"sft-seed{seed}.tmp-{uuid.uuid4().hex[:6]}"
    log(f"building the built-in SFT model (seed {seed}) into {out}; this is cached for later runs")
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_default_model(tmp, SFTConfig(seed=seed), log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    if (out / "config.json").is_file():  # another run won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    log(f"built the SFT model in {time.monotonic() - started:.0f}s")
    return out


def weights_digest(model_dir: Path) -> str:
    """sha256 over the model's weight files (by name): two runs that print the same digest started from the
    same bytes. The built-in build is pinned to one thread, but float kernels still differ between CPUs (an
    AVX-512 Intel and an AMD EPYC build other weights), so a committed result reproduces where this matches."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("*.bin")):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def register_sft(settings, model_dir: Path, base_model: str) -> str:
    """Publish ``model_dir`` as the registry's first version and point serving at it."""
    from registry.operations import Operations

    with Operations(settings) as ops:
        return ops.register_reference(model_dir, base_model, f"benchmark SFT reference ({base_model})",
                                      "benchmark bootstrap")


@dataclass
class StackConfig:
    """What a benchmark stack runs on."""

    redis_url: str = field(default_factory=lambda: os.environ.get(
        "RLHF_REDIS_URL", os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")))
    model_dir: Path | None = None
    """SFT model to register as v0001; None: the built-in model (cached per seed)."""
    seed: int = 0
    """Seed of training rounds (RLHF_SEED) and, unless ``sft_seed`` is set, of the built-in SFT model."""
    sft_seed: int | None = None
    """Seed of the built-in SFT model (None: ``seed``)."""
    device: str = "auto"
    """Torch device of server and worker."""
    registry: Path | None = None
    """Registry directory (must be new/empty); None: a temp dir removed on stop."""
    training: dict[str, Any] = field(default_factory=dict)
    """Round-size settings for the worker (names of :data:`TRAINING_KNOBS`), None = default."""
    log_dir: Path | None = None
    """Where worker.log goes; None: next to the registry."""
    max_new_tokens_default: int = 64
    """Server default for a Generate that leaves max_new_tokens 0."""
    reserved_prompts: list[str] = field(default_factory=fresh_prompts)
    """Prompts the worker's rounds never train on (RLHF_RESERVED_PROMPTS_FILE): the harness's fresh evaluation
    prompts, which its evaluation sends through Generate like any user."""
    gate_prompts: list[str] = field(default_factory=list)
    """More prompts for the promotion gate (RLHF_GATE_PROMPTS_FILE; gate_prompts.py): judged beside the held-out
    ones, never sampled by PPO."""
    cache: Path = CACHE


class Stack:
    """Server + worker on a fresh registry and Redis prefix; use as a context manager."""

    def __init__(self, cfg: StackConfig, log: Callable[[str], Any] = print):
        self.cfg, self.log = cfg, log
        self.key_prefix = f"bench-{uuid.uuid4().hex[:10]}:"
        self._tmp: Path | None = None
        self.server: BackgroundServer | None = None
        self.worker = None  # a rlhf_serve.local.CeleryChild
        self.worker_log: Path | None = None
        self.target = ""
        self.sft_version = ""
        self.settings = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Stack":
        from rlhf_core.settings import Settings
        cfg = self.cfg
        if cfg.registry is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="rlhf-bench-"))
            registry = self._tmp / "registry"
        else:
            registry = Path(cfg.registry)
            if registry.exists() and any(registry.iterdir()):
                raise SystemExit(f"registry {registry} is not empty; a benchmark needs a fresh one")
        log_dir = Path(cfg.log_dir) if cfg.log_dir else registry.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(redis_url=cfg.redis_url, key_prefix=self.key_prefix, registry=registry,
                                 host="127.0.0.1", port=0, metrics_port=-1, device=cfg.device, seed=cfg.seed,
                                 default_max_new_tokens=cfg.max_new_tokens_default, batch_wait_ms=10.0,
                                 insecure_admin=True)  # a loopback server for the benchmark
        self._check_redis()
        if cfg.model_dir is not None:
            model_dir, base = Path(cfg.model_dir), str(cfg.model_dir)
        else:
            sft_seed = cfg.seed if cfg.sft_seed is None else cfg.sft_seed
            model_dir, base = builtin_sft_dir(sft_seed, cfg.cache, self.log), f"builtin-sft (seed {sft_seed})"
        self.model_digest = weights_digest(model_dir)
        try:
            self.sft_version = register_sft(self.settings, model_dir, base)
            from service.app import BackgroundServer
            self.server = BackgroundServer(self.settings).start()
            self.target = f"127.0.0.1:{self.server.port}"
            self._start_worker(log_dir)
        except BaseException:
            self.stop()
            raise
        self.log(f"stack up: server {self.target}, SFT {self.sft_version}, redis prefix {self.key_prefix}, "
                 f"registry {registry}, worker log {self.worker_log}")
        return self

    def _check_redis(self) -> None:
        import redis
        try:
            redis.Redis.from_url(self.cfg.redis_url, socket_connect_timeout=3).ping()
        except redis.exceptions.ConnectionError as exc:
            raise SystemExit(f"Redis is not reachable at {self.cfg.redis_url} ({exc}); start one "
                             f"(`bash scripts/ensure_redis.sh`) or set REDIS_URL") from None

    def worker_environment(self) -> dict[str, str]:
        """What the worker's environment sets beyond the stack's Redis, key prefix and registry (and the files of
        reserved and gate prompts it names, written beside the registry)."""
        s = self.settings
        env = dict(RLHF_DEVICE=s.device, RLHF_SEED=str(self.cfg.seed), RLHF_MIN_NEW_FEEDBACK="1",
                   RLHF_WORKER_METRICS_PORT="-1")
        for prompts, name in ((self.cfg.reserved_prompts, "RESERVED"), (self.cfg.gate_prompts, "GATE")):
            if prompts:
                path = s.registry.parent / f"{name.lower()}_prompts.txt"
                path.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
                env[f"RLHF_{name}_PROMPTS_FILE"] = str(path)
        env.update(worker_env(self.cfg.training))
        return env

    def _start_worker(self, log_dir: Path) -> None:
        from rlhf_serve.local import CeleryChild
        self.worker_log = log_dir / "worker.log"
        self.worker = CeleryChild("worker", self.settings, log_dir, env=self.worker_environment(),
                                  log_path=self.worker_log)

    def check_worker(self) -> None:
        """Raise when the worker process has died (with the end of its log)."""
        if self.worker is not None and self.worker.proc.poll() is not None:
            tail = self.worker.output()[-3000:]
            raise RuntimeError(f"worker exited with {self.worker.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=30)
        if self.server is not None:
            try:
                self.server.stop()
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                self.log(f"server stop: {exc}")
            self.server = None
        if self.settings is not None:
            self._delete_prefix()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _delete_prefix(self) -> None:
        import redis
        from rlhf_serve.local import delete_prefix
        try:
            delete_prefix(self.cfg.redis_url, self.key_prefix)
        except redis.exceptions.RedisError as exc:
            self.log(f"could not delete redis prefix {self.key_prefix}: {exc}")

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
