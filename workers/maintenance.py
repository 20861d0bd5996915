"""Scheduled housekeeping tasks (beat): registry retention and beat's liveness heartbeat.

Beat exports no metrics itself; `rlhf.beat_heartbeat` runs every minute on a `default` worker
and sets `rlhf_beat_heartbeat_timestamp_seconds` there, so an alert can see that beat (and the
path beat -> Redis -> worker) is alive.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Gauge

from registry.retention import prune
from workers import metrics
from workers.celery_app import app, settings

log = logging.getLogger(__name__)
PRUNE_TASK = "rlhf.prune_registry"
HEARTBEAT_TASK = "rlhf.beat_heartbeat"
BEAT_HEARTBEAT = Gauge("rlhf_beat_heartbeat_timestamp_seconds",
                       "Unix time at which a worker last ran beat's heartbeat task.", registry=metrics.REGISTRY)
VERSIONS_DELETED = Gauge("rlhf_registry_versions_deleted", "Versions deleted by the last registry prune.",
                         registry=metrics.REGISTRY)


@app.task(name=HEARTBEAT_TASK, ignore_result=True, expires=120)
def beat_heartbeat() -> None:
    BEAT_HEARTBEAT.set_to_current_time()


@app.task(name=PRUNE_TASK)
def prune_registry() -> dict:
    """Applies the retention policy unless a round holds the lock (its parent must stay)."""
    from workers.tasks import ctx
    c = ctx()
    if c.lock.holder():
        return {"pruned": False, "why": "a training round is running"}
    plan = prune(c.registry, c.redis, c.keys, settings.retention_keep_refused)
    VERSIONS_DELETED.set(len(plan.delete))
    if plan.delete:
        log.info("registry retention deleted %s; kept %s", plan.delete, sorted(plan.keep))
    return {"pruned": True, "deleted": plan.delete, "kept": sorted(plan.keep), "at": time.time()}
