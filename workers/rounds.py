"""The stages of one training round, as plain functions (Celery tasks only call these).

    snapshot -> train_reward -> ppo -> evaluate -> publish

Each stage takes a typed `RoundState` (workers/state.py) and returns a new one with its part
filled in; workers/tasks.py turns it into a JSON dict only to hand it to the next Celery task.
Stages write only under `<registry>/.tmp/round-<id>/` until `publish`, which
writes the version atomically through the registry; so a failed or killed round leaves the
registry untouched.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import redis

from registry import Registry
from registry.pointer import current_version, set_current
from rlhf.v1 import records_pb2
from rlhf_core.keys import Keys
from rlhf_core.settings import Settings
from workers import lora_rounds, snapshots
from workers.manifest import fill_promotion, fill_training
from workers.lock import RoundLock
from workers.state import RoundState

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
        self.lock = RoundLock(self.redis, self.keys.round_lock, settings.round_lock_ttl_s,
                              settings.round_handoff_ttl_s)
        self.datasets = self.registry.root / "datasets"

    def workdir(self, round_id: str) -> Path:
        return self.registry.tmp_dir / f"round-{round_id}"


def should_run(ctx: Context, force: bool) -> tuple[bool, int]:
    pending = snapshots.backlog(ctx.redis, ctx.keys)
    return force or pending >= ctx.settings.min_new_feedback, pending


def begin(ctx: Context, round_id: str, trigger: str = "") -> RoundState | None:
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
    return RoundState(round_id=round_id, round_number=number, parent=parent, reference=reference,
                      started_at=time.time(), seed=ctx.settings.seed + number, trigger=trigger,
                      **lora_rounds.decide(ctx.registry, ctx.settings, parent, reference))  # issue 7: lora | full


TRAINING_SET = "training_set.json"


def training_set(ctx: Context, state: RoundState) -> tuple[list, list]:
    """(pairs, ratings) this round trains on, as its snapshot stage loaded them (once per round)."""
    return snapshots.read_training_set(ctx.workdir(state.round_id) / TRAINING_SET)


def snapshot(ctx: Context, state: RoundState) -> RoundState:
    """Saves the stream's new feedback, then loads the training set (the latest votes of the window,
    weighted per voter) once for the whole round: the later stages read it from the work dir."""
    with ctx.lock.held(state.round_id):
        snap = snapshots.take_snapshot(ctx.redis, ctx.keys, ctx.datasets, keep=ctx.settings.feedback_stream_keep)
        pairs, ratings, info = snapshots.load_training_set(ctx.datasets, ctx.settings.train_window,
                                                           snapshots.Hygiene.from_settings(ctx.settings))
        if not pairs and not ratings:
            raise NothingToTrain("no feedback to train on yet")
        snapshots.save_training_set(ctx.workdir(state.round_id) / TRAINING_SET, pairs, ratings)
    return replace(state, snapshot={"path": snap.path, "count": snap.count}, data=info)


def holding_lock(stage):
    """Runs a stage under the round lock's heartbeat from its first line: its imports (torch,
    transformers) take seconds, longer than a short lock expiry between stages."""
    @functools.wraps(stage)
    def run(ctx: Context, state: RoundState) -> RoundState:
        with ctx.lock.held(state.round_id):
            return stage(ctx, state)
    return run


REWARD_METRICS = ("train_loss", "train_accuracy", "heldout_accuracy", "heldout_loss", "n_pairs", "n_heldout",
                  "n_ratings", "heldout_pair_accuracy", "heldout_rating_accuracy",
                  "heldout_rating_balanced_accuracy", "heldout_rating_auc")
ENSEMBLE_METRICS = ("members", "member_heldout_accuracy", "member_train_accuracy")


@holding_lock
def train_reward(ctx: Context, state: RoundState) -> RoundState:
    """Cross-fitting (detail 22): the policy reward model (for PPO) and the judge (for the gate only)
    train on the feedback of disjoint halves of the prompts, split by a seeded hash of each prompt."""
    from training.gate import split_prompts
    from training.gate_eval import judge_accuracy_unseen
    from training.reward_ensemble import train_ensemble
    from training.reward_model import RewardModel, train_reward_model
    from transformers import AutoTokenizer

    started = time.perf_counter()
    pairs, ratings = training_set(ctx, state)
    cfg = reward_config(ctx, state)
    split = split_prompts([x.prompt for x in pairs + ratings], ctx.settings.seed)
    halves = dict(zip(("reward_model", "judge"), split))
    lora = state.finetune == "lora"
    tokenizer = AutoTokenizer.from_pretrained(ctx.registry.path(state.base_version if lora else state.parent))
    out = {}
    for name, prompts in halves.items():
        half_pairs = [p for p in pairs if p.prompt in prompts]
        half_ratings = [r for r in ratings if r.prompt in prompts]  # pointwise loss, split by prompt too
        if lora and name == "reward_model":  # issue 7: base + reward adapter + head (PPO shares the base)
            if ctx.settings.policy_rm_ensemble > 1:
                log.warning("round %s: RLHF_POLICY_RM_ENSEMBLE=%d is for full fine-tuning rounds; a LoRA round "
                            "trains one reward adapter", state.round_id, ctx.settings.policy_rm_ensemble)
            metrics = lora_rounds.train_reward(ctx.registry, ctx.settings, state, ctx.workdir(state.round_id),
                                               half_pairs, cfg, ctx.settings.device, ratings=half_ratings)
            out[name] = {k: metrics.get(k) for k in REWARD_METRICS} | {"n_prompts": len(prompts)}
            continue
        trunk = functools.partial(lora_rounds.parent_trunk, ctx.registry, state, ctx.settings.device)  # both modes
        members = ctx.settings.judge_ensemble if name == "judge" else ctx.settings.policy_rm_ensemble
        if (half_pairs or half_ratings) and members > 1:  # details 24, 25
            model, metrics = train_ensemble(trunk, tokenizer, half_pairs, cfg, half_ratings, members)
        elif half_pairs or half_ratings:  # the judge is a plain reward model in both modes
            model, metrics = train_reward_model(trunk(), tokenizer, half_pairs, cfg, ratings=half_ratings)
        else:  # a lone prompt leaves the judge nothing: an untrained head, no accuracy, the gate refuses
            model, metrics = RewardModel.from_pretrained_backbone(trunk(), tokenizer, cfg.max_len), {"n_pairs": 0}
        model.save(ctx.workdir(state.round_id) / name)
        out[name] = ({k: metrics.get(k) for k in REWARD_METRICS} | {"n_prompts": len(prompts)}
                     | {k: metrics[k] for k in ENSEMBLE_METRICS if k in metrics})
        if name == "judge" and (half_pairs or half_ratings):
            other = halves["reward_model"]
            out[name].update(judge_accuracy_unseen(model, metrics, [p for p in pairs if p.prompt in other],
                                                   [r for r in ratings if r.prompt in other], cfg.batch_size))
    out["reward_model"]["seconds"] = time.perf_counter() - started
    log.info("round %s reward models (policy | judge): %s | %s", state.round_id, out["reward_model"], out["judge"])
    return replace(state, reward_model=out["reward_model"], judge=out["judge"])


@holding_lock
def ppo(ctx: Context, state: RoundState) -> RoundState:
    from training.ppo_trainer import run_ppo
    from training.reference import norm_prompt_set
    from training.reward_ensemble import load_reward_models
    from training.text_format import train_prompts
    from transformers import AutoTokenizer

    started = time.perf_counter()
    work = ctx.workdir(state.round_id)
    cfg = ppo_config(ctx, state)
    prompts = training_prompts(ctx, state.seed)
    norm_prompts = norm_prompt_set(train_prompts(), cfg.norm_samples, ctx.settings.seed)  # fixed: detail 6
    if state.finetune == "lora":  # issue 7: policy, reference, value and reward on one base
        history = lora_rounds.ppo(ctx.registry, ctx.settings, state, work, prompts, cfg,
                                  lambda line: log.info("ppo %s", line), norm_prompts)
        return _ppo_summary(state, history, started, cfg)
    rm = load_reward_models(work / "reward_model", device=ctx.settings.device)  # never the judge; detail 25
    parent_dir, ref_dir = ctx.registry.path(state.parent), ctx.registry.path(state.reference)
    policy, history = run_ppo(parent_dir, ref_dir, rm, prompts, cfg, log=lambda line: log.info("ppo %s", line),
                              norm_prompts=norm_prompts)
    policy.save_pretrained(work / "policy")
    AutoTokenizer.from_pretrained(parent_dir).save_pretrained(work / "policy")
    _copy_generation_config(parent_dir, work / "policy")
    return _ppo_summary(state, history, started, cfg)


def _ppo_summary(state: RoundState, history: list[dict], started: float, cfg) -> RoundState:
    last = history[-1] if history else {}
    keys = ("mean_reward", "kl", "entropy", "clipfrac", "value_loss", "eos_fraction", "mean_response_len",
            "reward_gain", "reward_bias")
    summary = {k: float(last.get(k, 0.0)) for k in keys}
    summary.update(steps=len(history), planned_steps=cfg.steps, seconds=time.perf_counter() - started,
                   missing_eos_penalty=cfg.missing_eos_penalty, ent_coef=cfg.ent_coef,
                   repeat_coef=float(last.get("repeat_coef", 0.0)),
                   distinct_2_ratio=float(last.get("distinct_2_ratio", 0.0)),
                   trainable_parameters=float(last.get("trainable_parameters", 0.0)))
    return replace(state, ppo=summary, ppo_history=history)


@holding_lock
def evaluate(ctx: Context, state: RoundState) -> RoundState:
    """Samples candidate, parent and SFT reference on held-out prompts; the judge scores them (detail 23)."""
    from training.gate_eval import gate_figures, sample_policy, score_members, score_samples
    from training.ppo_trainer import load_causal_lm
    from training.devices import resolve_device
    from training.reward_ensemble import RewardEnsemble, judge_agreement, load_reward_models
    from transformers import AutoTokenizer

    work, device = ctx.workdir(state.round_id), resolve_device(ctx.settings.device)
    lora = state.finetune == "lora"
    judge = load_reward_models(work / "judge", device=ctx.settings.device)
    policy_rm = (lora_rounds.policy_reward_model(ctx.registry, ctx.settings, state, work, ctx.settings.device) if lora
                 else load_reward_models(work / "reward_model", device=ctx.settings.device))
    tokenizer = AutoTokenizer.from_pretrained(work / "policy")
    reference = load_causal_lm(ctx.registry.path(state.reference), device, trainable=False)
    prompts, cfg = eval_prompts(ctx), gate_sampling(ctx, state)
    samples = {}
    for name, version_dir in (("candidate", work / "policy"), ("parent", ctx.registry.path(state.parent))):
        policy = (lora_rounds.merged_policy(ctx.registry, state, version_dir, device) if lora
                  else load_causal_lm(version_dir, device, trainable=False))
        samples[name] = sample_policy(policy, reference, tokenizer, prompts, cfg)
    same = state.parent == state.reference
    samples["reference"] = samples["parent"] if same else sample_policy(reference, None, tokenizer, prompts, cfg)
    judged = {n: score_samples(judge, prompts, samples[n]) for n in ("candidate", "parent")}
    judges = (judge_agreement(*[score_members(judge, prompts, samples[n]) for n in ("candidate", "parent")])
              if isinstance(judge, RewardEnsemble) else {"members": 1})
    summaries = {n: s.summary() for n, s in samples.items()}
    judge_accuracy = state.judge.get("unseen_accuracy", state.judge["heldout_accuracy"])
    figures = gate_figures(judge_accuracy, judged["candidate"], judged["parent"],
                           summaries["candidate"], summaries["parent"], summaries["reference"], cfg)
    for n in ("candidate", "parent"):
        summaries[n]["mean_reward"] = _mean(judged[n])  # the judge's
        summaries[n]["policy_rm_reward"] = _mean(score_samples(policy_rm, prompts, samples[n]))  # PPO's RM
    return replace(state, evaluation={**summaries, "gate": asdict(figures), "judges": judges,
                                      "n_prompts": len(prompts), "samples_per_prompt": cfg.samples_per_prompt,
                                      "confidence": cfg.confidence})


def publish(ctx: Context, state: RoundState) -> RoundState:
    """Applies the gate, writes the version atomically, moves the pointer if promoted, records the round."""
    from training.gate import GateFigures, decide

    round_id = state.round_id
    ctx.lock.check(round_id)
    promoted, reason, checks = decide(GateFigures(**state.evaluation["gate"]), gate_thresholds(ctx.settings))
    manifest = build_manifest(ctx, state, promoted, reason, checks)
    published = ctx.registry.publish(ctx.workdir(round_id) / "policy", manifest)
    if promoted:
        set_current(ctx.redis, ctx.keys, ctx.registry, published.version, f"round {state.round_number}")
    done = replace(state, version=published.version, promoted=promoted, reason=reason, ppo_history=None,
                   checks=[c.as_dict() for c in checks], seconds=time.time() - state.started_at)
    finish(ctx, round_id, done.record())
    return done


def gate_thresholds(s: Settings):
    """The gate's thresholds from their settings (rlhf_core.settings.GATE_THRESHOLD_SETTINGS)."""
    from rlhf_core.settings import GATE_THRESHOLD_SETTINGS
    from training.config import GateThresholds
    return GateThresholds(**{field: getattr(s, name) for field, name in GATE_THRESHOLD_SETTINGS.items()})


def gate_sampling(ctx: Context, state: RoundState):
    """How the gate samples: its settings, PPO's temperature and token budget, the round's seed."""
    from rlhf_core.settings import GATE_SAMPLING_SETTINGS
    from training.config import GateSampling
    s = ctx.settings
    return GateSampling(**{field: getattr(s, name) for field, name in GATE_SAMPLING_SETTINGS.items()},
                        temperature=s.ppo.temperature, max_new_tokens=s.ppo.max_new_tokens,
                        batch_size=max(s.ppo.rollout_batch_size, 1), seed=state.seed)


def build_manifest(ctx: Context, state: RoundState, promoted: bool, reason: str,
                   checks: list) -> records_pb2.ModelManifest:
    m = records_pb2.ModelManifest(parent_version=state.parent, reference_version=state.reference,
                                  base_model=ctx.registry.manifest(state.parent).base_model)
    if state.finetune == "lora":  # issue 7: the version is an adapter on this base
        m.adapter_base_version = state.base_version
    m.training.finetune = state.finetune
    m.training.trainable_parameters = int((state.ppo or {}).get("trainable_parameters", 0))
    fill_training(m.training, state)
    fill_promotion(m.promotion, state.evaluation, promoted, reason, checks, ctx.settings.kl_bound)
    return m


def finish(ctx: Context, round_id: str, summary: dict) -> None:
    """Records the round, releases the lock and removes its work dir."""
    ctx.redis.lpush(ctx.keys.rounds, json.dumps(summary, default=str))
    ctx.redis.ltrim(ctx.keys.rounds, 0, 199)
    shutil.rmtree(ctx.workdir(round_id), ignore_errors=True)
    ctx.lock.release(round_id)


def prompts_file(path: Path | None) -> list[str]:
    """The prompts of a prompts file (``RLHF_RESERVED_PROMPTS_FILE``, ``RLHF_GATE_PROMPTS_FILE``) in file order: one
    per line, surrounding blanks ignored; none for no file."""
    if path is None:
        return []
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def training_prompts(ctx: Context, seed: int) -> list[str]:
    """Recent real prompts mixed with the shipped training prompts (never the held-out, reserved or gate ones)."""
    from training.text_format import heldout_prompts, train_prompts
    held = set(heldout_prompts() + prompts_file(ctx.settings.reserved_prompts_file)
               + prompts_file(ctx.settings.gate_prompts_file))
    recent = [p.decode() for p in ctx.redis.lrange(ctx.keys.recent_prompts, 0, ctx.settings.recent_prompts - 1)]
    real = [p for p in dict.fromkeys(recent) if p.strip() not in held]
    shipped = train_prompts()
    rng = random.Random(seed)
    mix = real + rng.sample(shipped, min(len(shipped), max(len(real), 32)))
    rng.shuffle(mix)
    return mix


def eval_prompts(ctx: Context) -> list[str]:
    """The gate's prompts: the shipped held-out ones, then RLHF_GATE_PROMPTS_FILE's (once each, file order),
    at most RLHF_EVAL_PROMPTS."""
    from training.text_format import heldout_prompts
    own = prompts_file(ctx.settings.gate_prompts_file)
    return list(dict.fromkeys(heldout_prompts() + own))[: ctx.settings.eval_prompts]


def ppo_config(ctx: Context, state: RoundState):
    """The settings' PPOConfig with this round's seed, the process's device (norm_seed: fixed, detail 6) and
    the round's KL budget (a share of the gate's bound, unless RLHF_PPO__KL_BUDGET sets one)."""
    s = ctx.settings
    budget = s.ppo.kl_budget
    if budget is None and s.round_kl_budget_share > 0:
        budget = s.round_kl_budget_share * s.kl_bound
    return replace(s.ppo, seed=state.seed, norm_seed=s.seed, device=s.device, kl_budget=budget)


def reward_config(ctx: Context, state: RoundState):
    """The settings' RewardConfig with this round's seed and the process's device."""
    return replace(ctx.settings.reward, seed=state.seed, device=ctx.settings.device)


def _mean(groups: list[list[float]]) -> float:
    flat = [x for g in groups for x in g]
    return sum(flat) / len(flat) if flat else float("nan")


def _copy_generation_config(src: Path, dst: Path) -> None:
    if (src / "generation_config.json").is_file() and not (dst / "generation_config.json").is_file():
        shutil.copy2(src / "generation_config.json", dst / "generation_config.json")
