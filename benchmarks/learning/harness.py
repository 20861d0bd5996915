"""Plays simulated end users against a running rlhf-serve through its public gRPC API only.

- :func:`collect_feedback`: users ask, the annotator compares two candidates (or rates one);
- :func:`evaluate` (evaluation.py): the served version against the SFT version on held-out prompts;
- :func:`trigger_and_wait` (trigger.py): an operator forces a training round and waits for its outcome;
- :func:`run`: R rounds of the above, one record per round.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import grpc

from benchmarks.learning.annotators import Annotator, make_annotator
from benchmarks.learning.evaluation import evaluate, refused_by_gold
from benchmarks.learning.fresh_prompts import fresh_prompts
from benchmarks.learning.rpc import Metadata, bearer, call
from benchmarks.learning.trigger import current_version, model_summary, trigger_and_wait
from benchmarks.learning.users import Crowd, spam
from rlhf.v1 import admin_pb2_grpc, policy_pb2, policy_pb2_grpc


@dataclass
class FeedbackCounts:
    """What one :func:`collect_feedback` call sent."""

    generations: int = 0
    comparisons: int = 0
    ratings: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    duplicates: int = 0
    identical_pairs: int = 0
    adversarial: int = 0
    """Items given by users who vote against the annotator."""
    users: int = 0
    """Distinct user ids that gave feedback."""

    @property
    def submitted(self) -> int:
        return self.comparisons + self.ratings

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "submitted": self.submitted}


def _feedback_request(prompt: str, cands: Sequence[policy_pb2.Candidate], annotator: Annotator,
                      rng: random.Random, rating_share: float, user_id: str,
                      counts: FeedbackCounts, against: bool = False) -> policy_pb2.FeedbackRequest:
    """The annotator's verdict on one Generate response: a comparison, or a rating for
    ``rating_share`` of the traffic (and when both candidates are the same text, or only one was
    served); ``against``: the verdict reversed (an adversarial user)."""
    a, b = cands[0], cands[-1]
    identical = len(cands) > 1 and a.text == b.text
    counts.identical_pairs += identical
    if identical or len(cands) < 2 or rng.random() < rating_share:
        cand = rng.choice((a, b))
        up = annotator.rate(prompt, cand.text, rng) != against
        counts.ratings += 1
        counts.thumbs_up += up
        counts.thumbs_down += not up
        return policy_pb2.FeedbackRequest(
            rating=policy_pb2.Rating(response_id=cand.response_id, thumbs_up=up),
            user_id=user_id, idempotency_key=f"{user_id}:{cand.response_id}")
    chosen, rejected = (a, b) if (annotator.prefer(prompt, a.text, b.text, rng) == 0) != against else (b, a)
    counts.comparisons += 1
    return policy_pb2.FeedbackRequest(
        comparison=policy_pb2.Comparison(chosen_response_id=chosen.response_id,
                                         rejected_response_id=rejected.response_id),
        user_id=user_id, idempotency_key=f"{user_id}:{chosen.response_id}:{rejected.response_id}")


def collect_feedback(policy_stub: policy_pb2_grpc.PolicyServiceStub, prompts: Sequence[str],
                     annotator: Annotator, rng: random.Random, rating_share: float = 0.0,
                     user_id: str = "sim-user", sampling: policy_pb2.SamplingParams | None = None,
                     metadata: Metadata = None, crowd: Crowd | None = None) -> FeedbackCounts:
    """One feedback item per prompt: Generate two candidates from the current version, then submit
    the annotator's comparison (or, for ``rating_share`` of prompts, a thumbs up/down). With a
    ``crowd``, each item comes from one of its users (drawn at random; adversarial users reverse
    the verdict; thumbs-only users are served one candidate and rate it); else all from ``user_id``."""
    counts, seen = FeedbackCounts(), set()
    for prompt in prompts:
        params = policy_pb2.SamplingParams()
        if sampling is not None:
            params.CopyFrom(sampling)
        params.seed = rng.getrandbits(62)
        user, against = crowd.pick(rng) if crowd is not None else (user_id, False)
        n = 1 if crowd is not None and crowd.thumbs_only else 2
        resp = call(policy_stub.Generate, policy_pb2.GenerateRequest(
            prompt=prompt, sampling=params, num_candidates=n, user_id=user), metadata)
        counts.generations += 1
        req = _feedback_request(prompt, resp.candidates, annotator, rng, rating_share, user, counts, against)
        ack = call(policy_stub.SubmitFeedback, req, metadata)
        counts.duplicates += ack.duplicate
        counts.adversarial += against
        seen.add(user)
    counts.users = len(seen)
    return counts


@dataclass
class LearningConfig:
    """One benchmark run against a server at ``target`` (server and worker started elsewhere)."""

    target: str = "127.0.0.1:50051"
    annotator: str = "empathetic"
    noise: float = 0.1
    temperature: float = 0.0
    rounds: int = 3
    feedback_per_round: int = 64
    rating_share: float = 0.2
    eval_prompts: int = 0
    """How many held-out prompts to evaluate on; 0: all of them."""
    eval_samples: int = 4
    fresh_eval: bool = True
    """Also evaluate every served version on the fresh prompts (fresh_prompts.py, as many as ``eval_prompts``),
    which the gate never judges on: the held-out figure is measured on the prompts the gate selected on."""
    max_new_tokens: int = 0
    """Per-response token cap for every Generate; 0: the server default."""
    sampling_temperature: float | None = None
    """Sampling temperature of every Generate (feedback and evaluation); None: the server default."""
    feedback_temperature: float | None = None
    """Sampling temperature of the users' Generates only (evaluation keeps ``sampling_temperature``): a client
    app may sample the candidates it asks users to compare more widely, so that the pairs differ."""
    sft_version: str = "v0001"
    round_timeout_s: float = 900.0
    seed: int = 0
    user_id: str = "sim-user"
    """Base id of the simulated users (``<user_id>-u<k>``)."""
    users: int = 12
    thumbs_only: bool = False
    """Users only give thumbs up/down on a single served candidate (no comparisons)."""
    adversarial_fraction: float = 0.0
    """Share of the users who vote against the annotator."""
    spam_votes: int = 0
    """> 0: a spammer repeats one opposite vote this many times per round (fresh idempotency keys)."""
    api_token: str = ""
    admin_token: str = ""
    train_prompts: list[str] = field(default_factory=list)
    """Prompts the simulated users ask; empty: the dataset's train split."""
    heldout_prompts: list[str] = field(default_factory=list)
    """Evaluation prompts; empty: the dataset's held-out split."""
    until_promoted: bool = False
    """End the run after the first round that promotes a version (a smoke test's "does one get through")."""


def _eval_record(ev: dict[str, Any]) -> dict[str, Any]:
    """Flat per-round fields of an evaluation (the full dict stays under "eval")."""
    s, b = ev["served"], ev["sft"]
    return {"win_rate": ev["win_rate"], "win_rate_lo": ev["win_rate_lo"], "win_rate_hi": ev["win_rate_hi"],
            "score_served": s["mean_score"], "score_sft": b["mean_score"],
            "distinct_1": s["distinct_1"], "distinct_2": s["distinct_2"], "mean_length": s["mean_length"],
            "sft_distinct_2": b["distinct_2"], "sft_mean_length": b["mean_length"]}


def evaluate_fresh(policy_stub: policy_pb2_grpc.PolicyServiceStub, annotator: Annotator, version: str,
                   cfg: LearningConfig, sampling: policy_pb2.SamplingParams | None, metadata: Metadata,
                   cache: dict[str, Any]) -> dict[str, Any]:
    """``version`` against SFT on the fresh prompts (the first ``cfg.eval_prompts`` of them, when set), once per
    version (the sampling is seeded, so a version that stays served scores the same): win rate with its CI,
    gold score, distinct-2."""
    if version not in cache:
        prompts = fresh_prompts()[: cfg.eval_prompts or None]
        ev = evaluate(policy_stub, prompts, annotator, version, cfg.sft_version, cfg.eval_samples,
                      seed=cfg.seed, sampling=sampling, metadata=metadata, sft_cache=cache.setdefault("_sft", {}))
        cache[version] = {"win_rate_fresh": ev["win_rate"], "win_rate_fresh_lo": ev["win_rate_lo"],
                          "win_rate_fresh_hi": ev["win_rate_hi"], "score_fresh": ev["served"]["mean_score"],
                          "distinct_2_fresh": ev["served"]["distinct_2"],
                          "sft_distinct_2_fresh": ev["sft"]["distinct_2"]}
    return cache[version]


def _round_note(rec: dict[str, Any]) -> str:
    """Promotion outcome and training figures of a round, for the log line."""
    if "outcome" not in rec:
        return ""
    o, m = rec["outcome"], rec.get("model", {})
    state = "timed out" if o["timed_out"] else "rejected" if o["rejected"] else "promoted"
    note = f" | {o['candidate_version'] or '-'} {state} after {o['seconds']:.0f}s"
    if m:
        note += (f": RM acc {m['reward_model_accuracy']:.2f}, gate reward {m['candidate_reward']:.3f} vs "
                 f"{m['parent_reward']:.3f}, KL {m['kl_to_reference']:.2f}")
    g = rec.get("refused_gold", {})
    if "win_rate_vs_parent" in g:
        note += f"; gold: refused candidate vs parent {g['win_rate_vs_parent']:.3f}, vs SFT {g['win_rate_vs_sft']:.3f}"
    return note


def _samplings(cfg: LearningConfig) -> tuple[policy_pb2.SamplingParams, policy_pb2.SamplingParams]:
    """Sampling of the evaluation's Generates, and of the users' (``feedback_temperature`` may differ)."""
    sampling = policy_pb2.SamplingParams(max_new_tokens=cfg.max_new_tokens)
    if cfg.sampling_temperature is not None:
        sampling.temperature = cfg.sampling_temperature
    feedback_sampling = policy_pb2.SamplingParams()
    feedback_sampling.CopyFrom(sampling)
    if cfg.feedback_temperature is not None:
        feedback_sampling.temperature = cfg.feedback_temperature
    return sampling, feedback_sampling


def _stop_reason(r: int, cfg: LearningConfig, rounds: list[dict[str, Any]], elapsed_s: float,
                 deadline_s: float | None, interrupted: Callable[[], bool]) -> str:
    """Why no round ``r`` starts ("" when it does)."""
    done = f"stopped after round {r - 1} of {cfg.rounds}"
    if r > 0 and deadline_s is not None and elapsed_s > deadline_s:
        return f"{done}: the {deadline_s:.0f}s budget is spent"
    if r > 0 and interrupted():
        return f"{done}: interrupted (stop file)"
    if r > 1 and cfg.until_promoted and rounds[-1]["version"] != cfg.sft_version:
        return f"{done}: {rounds[-1]['version']} was promoted"
    return ""


def _train_round(policy: policy_pb2_grpc.PolicyServiceStub, admin: admin_pb2_grpc.AdminServiceStub,
                 cfg: LearningConfig, annotator: Annotator, rng: random.Random, train: Sequence[str], crowd: Crowd,
                 sampling: policy_pb2.SamplingParams, md: Metadata, admin_md: Metadata,
                 on_poll: Callable[[], None] | None) -> dict[str, Any]:
    """One round's feedback through the API, the forced round and its candidate's summary."""
    prompts = [rng.choice(train) for _ in range(cfg.feedback_per_round)]
    rec: dict[str, Any] = {"feedback": collect_feedback(policy, prompts, annotator, rng, cfg.rating_share,
                                                        cfg.user_id, sampling, md, crowd).as_dict()}
    if cfg.spam_votes > 0:
        rec["spam"] = spam(policy, rng.choice(train), annotator, crowd, cfg.spam_votes, rng, sampling, md)
    outcome = trigger_and_wait(admin, policy, cfg.round_timeout_s, admin_metadata=admin_md, metadata=md,
                               on_poll=on_poll)
    rec["outcome"] = outcome.as_dict()
    if outcome.candidate_version:
        info = call(policy.GetModel, policy_pb2.GetModelRequest(model_version=outcome.candidate_version), md)
        rec["model"] = model_summary(info)
    return rec


def _log_line(rec: dict[str, Any], ev: dict[str, Any]) -> str:
    fresh = f"(fresh {rec['win_rate_fresh']:.3f}) " if "win_rate_fresh" in rec else ""
    return (f"round {rec['round']}: {rec['version']} win={ev['win_rate']:.3f} [{ev['win_rate_lo']:.3f}, "
            f"{ev['win_rate_hi']:.3f}] {fresh}score {rec['score_served']:.2f} vs sft {rec['score_sft']:.2f} "
            f"KL {rec['kl_to_sft']:.2f} distinct-2 {rec['distinct_2']:.3f} vs {rec['sft_distinct_2']:.3f} "
            f"len {rec['mean_length']:.1f} ({rec['wall_s']:.0f}s, total {rec['elapsed_s']:.0f}s)" + _round_note(rec))


def run(cfg: LearningConfig, log: Callable[[str], None] = print, on_poll: Callable[[], None] | None = None,
        deadline_s: float | None = None, interrupted: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """R rounds of: users give feedback, a round is forced, the served version is evaluated vs SFT.
    Round 0 is the evaluation before any training. ``on_poll`` runs while waiting for a round;
    no new round starts once ``deadline_s`` seconds have passed or once ``interrupted()`` is true."""
    from training.text_format import heldout_prompts, train_prompts
    start = time.monotonic()
    rng = random.Random(cfg.seed)
    annotator = make_annotator(cfg.annotator, cfg.noise, cfg.temperature)
    train = cfg.train_prompts or train_prompts()
    heldout = cfg.heldout_prompts or heldout_prompts()
    heldout = heldout[:cfg.eval_prompts] if cfg.eval_prompts else heldout
    md, admin_md = bearer(cfg.api_token), bearer(cfg.admin_token)
    sampling, feedback_sampling = _samplings(cfg)
    crowd = Crowd(cfg.user_id, cfg.users, cfg.adversarial_fraction, cfg.thumbs_only)
    with grpc.insecure_channel(cfg.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=120)
        policy = policy_pb2_grpc.PolicyServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        rounds: list[dict[str, Any]] = []
        served_kl, sft_cache, held_cache, fresh_cache, stopped = 0.0, {}, {}, {}, ""
        for r in range(cfg.rounds + 1):
            stopped = _stop_reason(r, cfg, rounds, time.monotonic() - start, deadline_s, interrupted)
            if stopped:
                log(stopped)
                break
            t0 = time.monotonic()
            rec: dict[str, Any] = {"round": r}
            if r > 0:
                rec.update(_train_round(policy, admin, cfg, annotator, rng, train, crowd, feedback_sampling, md,
                                        admin_md, on_poll))
                if rec.get("model") and rec["outcome"]["new_version"]:
                    served_kl = rec["model"]["kl_to_reference"]
            version = current_version(policy, md)
            if version not in held_cache:  # seeded sampling: a version still served scores the same
                held_cache[version] = evaluate(policy, heldout, annotator, version, cfg.sft_version, cfg.eval_samples,
                                               seed=cfg.seed, sampling=sampling, metadata=md, sft_cache=sft_cache)
            ev = held_cache[version]
            if rec.get("model") and rec["outcome"]["rejected"]:
                rec["refused_gold"] = refused_by_gold(policy, heldout, annotator, rec["model"]["version"], ev,
                                                      cfg.seed, sampling, md)
            if cfg.fresh_eval:
                rec.update(evaluate_fresh(policy, annotator, version, cfg, sampling, md, fresh_cache))
            rec.update(version=version, **_eval_record(ev), kl_to_sft=served_kl, eval=ev,
                       wall_s=time.monotonic() - t0, elapsed_s=time.monotonic() - start)
            rounds.append(rec)
            log(_log_line(rec, ev))
    return {"config": asdict(cfg), "annotator": annotator.name, "rounds": rounds,
            "wall_s": time.monotonic() - start, "notes": [stopped] if stopped else []}
