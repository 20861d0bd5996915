"""The stages of one training round, as plain functions (Celery tasks only call these).

    snapshot -> train_reward -> ppo -> evaluate -> publish

Each stage takes and returns a `RoundState` dict (JSON-serialisable, so it travels between
Celery workers). Stages write only under `<registry>/.tmp/round-<id>/` until `publish`, which
writes the version atomically through the registry; so a failed or killed round leaves the
registry untouched.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import redis

from registry import Registry
from registry.pointer import current_version, set_current
from rlhf.v1 import records_pb2
from rlhf_serve.keys import Keys
from rlhf_serve.settings import Settings
from workers import lora_rounds, snapshots
from workers.lock import RoundLock

log = logging.getLogger(__name__)


class NothingToTrain(RuntimeError):
    """The round has no feedback to train on (not worth retrying)."""


class Context:
    """Connections and paths every stage needs, built from Settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.registry = Registry(settings.registry)
        self.lock = RoundLock(self.redis, self.keys.round_lock, settings.round_lock_ttl_s)
        self.datasets = self.registry.root / "datasets"

    def workdir(self, round_id: str) -> Path:
        return self.registry.tmp_dir / f"round-{round_id}"


def should_run(ctx: Context, force: bool) -> tuple[bool, int]:
    pending = snapshots.backlog(ctx.redis, ctx.keys)
    return force or pending >= ctx.settings.min_new_feedback, pending


def begin(ctx: Context, round_id: str) -> dict | None:
    """Takes the round lock and clears stale work dirs; None if another round is running."""
    if not ctx.lock.acquire(round_id):
        return None
    for stale in ctx.registry.tmp_dir.glob("round-*") if ctx.registry.tmp_dir.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed round (we hold the lock)
    parent = current_version(ctx.redis, ctx.keys, ctx.registry)
    if not parent:
        ctx.lock.release(round_id)
        raise RuntimeError("no current model version; run `rlhf-serve bootstrap` first")
    reference = ctx.registry.manifest(parent).reference_version or parent
    number = int(ctx.redis.incr(ctx.keys.round_counter))
    return {"round_id": round_id, "round_number": number, "parent": parent, "reference": reference,
            "started_at": time.time(), "seed": ctx.settings.seed + number,
            **lora_rounds.decide(ctx.registry, ctx.settings, parent, reference)}  # issue 7: lora | full


def snapshot(ctx: Context, state: dict) -> dict:
    with ctx.lock.held(state["round_id"]):
        snap = snapshots.take_snapshot(ctx.redis, ctx.keys, ctx.datasets)
        pairs, ratings, info = snapshots.load_training_set(ctx.datasets, ctx.settings.train_window)
    if not pairs and not ratings:
        raise NothingToTrain("no feedback to train on yet")
    return {**state, "snapshot": {"path": snap.path, "count": snap.count}, "data": info}


def train_reward(ctx: Context, state: dict) -> dict:
    from training.config import RewardConfig
    from training.records import pairs_from_ratings
    from training.reward_model import train_reward_model
    from transformers import AutoTokenizer

    with ctx.lock.held(state["round_id"]):
        started = time.perf_counter()
        pairs, ratings, _ = snapshots.load_training_set(ctx.datasets, ctx.settings.train_window)
        cfg = RewardConfig(epochs=ctx.settings.reward_epochs, seed=state["seed"], device=_device(ctx),
                           lr=ctx.settings.reward_lr)
        pairs = pairs + pairs_from_ratings(ratings, cfg.rating_pair_weight)
        parent_dir = ctx.registry.path(state["parent"])
        if state.get("finetune") == "lora":  # issue 7: base + reward adapter + head
            metrics = lora_rounds.train_reward(ctx.registry, ctx.settings, state, ctx.workdir(state["round_id"]),
                                               pairs, cfg, _device(ctx))
        else:
            model, metrics = train_reward_model(parent_dir, AutoTokenizer.from_pretrained(parent_dir), pairs, cfg)
            model.save(ctx.workdir(state["round_id"]) / "reward_model")
    rm = {k: metrics[k] for k in ("train_loss", "train_accuracy", "heldout_accuracy", "heldout_loss", "n_pairs")}
    rm["seconds"] = time.perf_counter() - started
    log.info("round %s reward model: %s", state["round_id"], rm)
    return {**state, "reward_model": rm}


def ppo(ctx: Context, state: dict) -> dict:
    from training.ppo_trainer import run_ppo
    from training.reward_model import RewardModel
    from transformers import AutoTokenizer

    with ctx.lock.held(state["round_id"]):
        started = time.perf_counter()
        work = ctx.workdir(state["round_id"])
        prompts = training_prompts(ctx, state["seed"])
        if state.get("finetune") == "lora":  # issue 7: policy, reference, value and reward on one base
            history = lora_rounds.ppo(ctx.registry, ctx.settings, state, work, prompts, ppo_config(ctx, state),
                                      lambda line: log.info("ppo %s", line))
            return _ppo_summary(state, history, started)
        rm = RewardModel.load(work / "reward_model", device=_device(ctx))
        parent_dir, ref_dir = ctx.registry.path(state["parent"]), ctx.registry.path(state["reference"])
        policy, history = run_ppo(parent_dir, ref_dir, rm, prompts, ppo_config(ctx, state),
                                  log=lambda line: log.info("ppo %s", line))
        policy.save_pretrained(work / "policy")
        AutoTokenizer.from_pretrained(parent_dir).save_pretrained(work / "policy")
        _copy_generation_config(parent_dir, work / "policy")
    return _ppo_summary(state, history, started)


def _ppo_summary(state: dict, history: list[dict], started: float) -> dict:
    last = history[-1] if history else {}
    summary = {k: float(last.get(k, 0.0)) for k in ("mean_reward", "kl", "entropy", "clipfrac", "value_loss")}
    summary.update(steps=len(history), seconds=time.perf_counter() - started,
                   trainable_parameters=float(last.get("trainable_parameters", 0.0)))
    return {**state, "ppo": summary, "ppo_history": history}


def evaluate(ctx: Context, state: dict) -> dict:
    """Scores candidate and parent with the round's reward model on held-out prompts."""
    from training.ppo_trainer import evaluate_policy, load_causal_lm
    from training.reward_model import RewardModel, pick_device
    from transformers import AutoTokenizer

    with ctx.lock.held(state["round_id"]):
        work, device = ctx.workdir(state["round_id"]), pick_device(_device(ctx))
        if state.get("finetune") == "lora":  # issue 7
            figures = lora_rounds.evaluate(ctx.registry, ctx.settings, state, work, eval_prompts(ctx),
                                           ppo_config(ctx, state), _device(ctx))
            return {**state, "evaluation": figures}
        rm = RewardModel.load(work / "reward_model", device=_device(ctx))
        tokenizer = AutoTokenizer.from_pretrained(work / "policy")
        reference = load_causal_lm(ctx.registry.path(state["reference"]), device, trainable=False)
        prompts = eval_prompts(ctx)
        cfg = ppo_config(ctx, state)
        figures = {}
        for name, path in (("candidate", work / "policy"), ("parent", ctx.registry.path(state["parent"]))):
            policy = load_causal_lm(path, device, trainable=False)
            figures[name] = evaluate_policy(policy, reference, rm, tokenizer, prompts, cfg)
    return {**state, "evaluation": figures}


def publish(ctx: Context, state: dict) -> dict:
    """Applies the gate, writes the version atomically, moves the pointer if promoted."""
    round_id = state["round_id"]
    ctx.lock.check(round_id)
    cand, parent = state["evaluation"]["candidate"], state["evaluation"]["parent"]
    promoted, reason = gate(cand["mean_reward"], parent["mean_reward"], cand["kl"], ctx.settings.kl_bound,
                            ctx.settings.gate_min_reward_gain)
    manifest = build_manifest(ctx, state, promoted, reason)
    published = ctx.registry.publish(ctx.workdir(round_id) / "policy", manifest)
    if promoted:
        set_current(ctx.redis, ctx.keys, ctx.registry, published.version, f"round {state['round_number']}")
    summary = {**state, "version": published.version, "promoted": promoted, "reason": reason,
               "seconds": time.time() - state["started_at"]}
    summary.pop("ppo_history", None)
    finish(ctx, round_id, summary)
    return summary


def gate(candidate_reward: float, parent_reward: float, kl: float, kl_bound: float,
         min_gain: float = 0.0) -> tuple[bool, str]:
    """Promote only a candidate that the reward model prefers and that stays near the reference."""
    if not candidate_reward > parent_reward + min_gain:
        return False, (f"reward {candidate_reward:.4f} is not above the parent's {parent_reward:.4f}"
                       f" + margin {min_gain:g}")
    if kl > kl_bound:
        return False, f"KL to the SFT reference {kl:.2f} exceeds the bound {kl_bound:.2f}"
    return True, f"reward {candidate_reward:.4f} > parent {parent_reward:.4f}, KL {kl:.2f} <= {kl_bound:.2f}"


def build_manifest(ctx: Context, state: dict, promoted: bool, reason: str) -> records_pb2.ModelManifest:
    cand, parent = state["evaluation"]["candidate"], state["evaluation"]["parent"]
    rm, data, ppo_summary = state["reward_model"], state["data"], state["ppo"]
    m = records_pb2.ModelManifest(parent_version=state["parent"], reference_version=state["reference"],
                                  base_model=ctx.registry.manifest(state["parent"]).base_model)
    if state.get("finetune") == "lora":  # issue 7: the version is an adapter on this base
        m.adapter_base_version = state["base_version"]
    m.training.finetune = state.get("finetune", "full")
    m.training.trainable_parameters = int(ppo_summary.get("trainable_parameters", 0))
    t = m.training
    t.first_feedback_id, t.last_feedback_id = data["first_feedback_id"], data["last_feedback_id"]
    t.num_comparisons, t.num_ratings, t.num_prompts = data["num_comparisons"], data["num_ratings"], data["num_prompts"]
    t.reward_model_accuracy = rm["heldout_accuracy"] if rm["heldout_accuracy"] is not None else float("nan")
    t.reward_model_loss = rm["train_loss"] or 0.0
    t.ppo_mean_reward, t.ppo_kl = ppo_summary["mean_reward"], ppo_summary["kl"]
    t.seconds = time.time() - state["started_at"]
    t.description = f"ppo round {state['round_number']} ({state['round_id']})"
    p = m.promotion
    p.promoted, p.reason = promoted, reason
    p.candidate_reward, p.parent_reward = cand["mean_reward"], parent["mean_reward"]
    p.kl_to_reference, p.kl_bound = cand["kl"], ctx.settings.kl_bound
    p.decided_at.GetCurrentTime()
    return m


def finish(ctx: Context, round_id: str, summary: dict) -> None:
    """Records the round, releases the lock and removes its work dir."""
    ctx.redis.lpush(ctx.keys.rounds, json.dumps(summary, default=str))
    ctx.redis.ltrim(ctx.keys.rounds, 0, 199)
    shutil.rmtree(ctx.workdir(round_id), ignore_errors=True)
    ctx.lock.release(round_id)


def training_prompts(ctx: Context, seed: int) -> list[str]:
    """Recent real prompts mixed with the shipped training prompts (never the held-out ones)."""
    from training.text_format import heldout_prompts, train_prompts
    held = set(heldout_prompts())
    recent = [p.decode() for p in ctx.redis.lrange(ctx.keys.recent_prompts, 0, ctx.settings.recent_prompts - 1)]
    real = [p for p in dict.fromkeys(recent) if p not in held]
    shipped = train_prompts()
    rng = random.Random(seed)
    mix = real + rng.sample(shipped, min(len(shipped), max(len(real), 32)))
    rng.shuffle(mix)
    return mix


def eval_prompts(ctx: Context) -> list[str]:
    from training.text_format import heldout_prompts
    return heldout_prompts()[: ctx.settings.eval_prompts]


def ppo_config(ctx: Context, state: dict):
    from training.config import PPOConfig
    s = ctx.settings
    return PPOConfig(steps=s.ppo_steps, seed=state["seed"], device=_device(ctx), init_kl_coef=s.kl_coef,
                     adaptive_kl=s.adaptive_kl, kl_target=s.kl_target, lr=s.ppo_lr,
                     rollout_batch_size=s.ppo_batch_size, max_new_tokens=s.ppo_max_new_tokens,
                     temperature=s.ppo_temperature)


def _device(ctx: Context) -> str | None:
    return None if ctx.settings.device == "auto" else ctx.settings.device


def _copy_generation_config(src: Path, dst: Path) -> None:
    if (src / "generation_config.json").is_file() and not (dst / "generation_config.json").is_file():
        shutil.copy2(src / "generation_config.json", dst / "generation_config.json")
