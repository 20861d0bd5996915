"""Thin Celery tasks: each runs one stage of workers.rounds and passes the state on.

The stages work on a typed `RoundState`; here, and only here, it becomes a JSON dict
(`RoundState.to_dict`) to travel to the next task, and is rebuilt from one (`from_dict`).

`rlhf.round` (beat, `rlhf-serve train --now`, AdminService.TriggerRound) checks the backlog,
takes the round lock and launches the chain; training stages run on the `gpu` queue.
"""

from __future__ import annotations

import logging
import time
import uuid

from celery import chain
from celery.exceptions import Ignore

from rlhf_core.tasks import REAP_TASK, ROUND_TASK
from workers import liveness, metrics, rounds
from workers.celery_app import app, settings
from workers.lock import LockLost
from workers.state import RoundState

log = logging.getLogger(__name__)
RETRY = dict(autoretry_for=(Exception,), dont_autoretry_for=(LockLost, rounds.NothingToTrain),
             retry_backoff=5, retry_backoff_max=120, retry_jitter=True, max_retries=2)
_ctx: rounds.Context | None = None


def ctx() -> rounds.Context:
    global _ctx
    if _ctx is None:
        _ctx = rounds.Context(settings)
    return _ctx


def _stage(name: str, fn, data: dict) -> RoundState:
    """Runs one stage on the state received from the previous task (a JSON dict)."""
    state = RoundState.from_dict(data)
    started = time.perf_counter()
    try:
        with liveness.heartbeat(ctx(), state.round_id, name):
            return fn(ctx(), state)
    except liveness.RoundGone as exc:  # a redelivered task of a round that was abandoned: stop quietly
        log.warning("%s", exc)
        metrics.STALE_TASKS.inc()
        raise Ignore() from exc
    finally:
        metrics.STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)


@app.task(name=REAP_TASK)
def reap_rounds() -> list[str]:
    """Beat task: records rounds whose worker died as abandoned and frees what they held."""
    reaped = liveness.reap(ctx(), rounds.finish)
    for _ in reaped:
        metrics.ROUNDS.labels("abandoned").inc()
    return [record["round_id"] for record in reaped]


@app.task(name=ROUND_TASK)
def start_round(force: bool = False, reason: str = "") -> dict:
    reap_rounds()  # a round abandoned since the last reaper tick must not keep its lock or scratch dir
    run, pending = rounds.should_run(ctx(), force)
    metrics.BACKLOG.set(pending)
    if not run:
        metrics.ROUNDS.labels("skipped").inc()
        return {"started": False, "why": f"{pending} new feedback items < {settings.min_new_feedback}"}
    round_id = uuid.uuid4().hex[:12]
    state = rounds.begin(ctx(), round_id, trigger=reason)
    if state is None:
        return {"started": False, "why": "another round is running"}
    liveness.register(ctx(), state.round_id, state.round_number)
    pipeline = chain(snapshot.s(state.to_dict()), train_reward_model.s(), run_ppo.s(), evaluate.s(), publish.s())
    result = pipeline.apply_async(link_error=round_failed.si(round_id))
    log.info("round %s started (%s): chain %s", round_id, reason, result.id)
    return {"started": True, "round_id": round_id, "result_id": result.id}


@app.task(name="rlhf.snapshot", **RETRY)
def snapshot(state: dict) -> dict:
    done = _stage("snapshot", rounds.snapshot, state)
    metrics.BACKLOG.set(rounds.snapshots.backlog(ctx().redis, ctx().keys))
    return done.to_dict()


@app.task(name="rlhf.train_reward_model", **RETRY)
def train_reward_model(state: dict) -> dict:
    return _stage("reward_model", rounds.train_reward, state).to_dict()


@app.task(name="rlhf.run_ppo", **RETRY)
def run_ppo(state: dict) -> dict:
    return _stage("ppo", rounds.ppo, state).to_dict()


@app.task(name="rlhf.evaluate", **RETRY)
def evaluate(state: dict) -> dict:
    return _stage("evaluate", rounds.evaluate, state).to_dict()


@app.task(name="rlhf.publish", **RETRY)
def publish(state: dict) -> dict:
    """The last stage: returns the round's record (as pushed to the Redis list of rounds)."""
    done = _stage("publish", rounds.publish, state)
    liveness.retire(ctx(), done.round_id)
    summary = done.record()
    metrics.observe_round(summary)
    return summary


@app.task(name="rlhf.round_failed")
def round_failed(round_id: str) -> None:
    """Error callback of the chain: the registry was not touched; free the lock for the next round."""
    if not liveness.retire(ctx(), round_id):
        log.warning("round %s already ended (finished or abandoned); nothing to record", round_id)
        return
    metrics.ROUNDS.labels("failed").inc()
    rounds.finish(ctx(), round_id, {"round_id": round_id, "failed": True, "at": time.time()})
    log.error("round %s failed; the registry is unchanged", round_id)
