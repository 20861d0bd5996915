"""Scheduled housekeeping (beat): registry retention, and beat's own liveness metric.

Beat is a separate process with no metrics of its own. `serve_beat_metrics` (called from the
`beat_init` signal) serves `rlhf_beat_last_publish_timestamp_seconds`, set each time beat
publishes a scheduled task; the one-minute `rlhf.beat_heartbeat` tick keeps it fresh, so an
alert can tell that beat runs and reaches the broker, independently of the workers.
"""

from __future__ import annotations

import logging
import time

from celery import signals
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from registry.retention import prune
from workers import metrics
from workers.celery_app import app, settings

log = logging.getLogger(__name__)
PRUNE_TASK = "rlhf.prune_registry"
HEARTBEAT_TASK = "rlhf.beat_heartbeat"
BEAT_REGISTRY = CollectorRegistry()
BEAT_LAST_PUBLISH = Gauge("rlhf_beat_last_publish_timestamp_seconds",
                          "Unix time at which beat last published a scheduled task.", registry=BEAT_REGISTRY)
VERSIONS_DELETED = Gauge("rlhf_registry_versions_deleted", "Versions deleted by the last registry prune.",
                         registry=metrics.REGISTRY)


def _published(**_) -> None:
    BEAT_LAST_PUBLISH.set_to_current_time()


def serve_beat_metrics(port: int) -> int | None:
    """In the beat process: count publishes and serve them on `port` (-1: off)."""
    signals.after_task_publish.connect(_published, weak=False)
    if port < 0:
        return None
    server, _ = start_http_server(port, registry=BEAT_REGISTRY)
    return server.server_port


@app.task(name=HEARTBEAT_TASK, ignore_result=True)
def beat_heartbeat() -> None:
    """Nothing to do: publishing it is beat's heartbeat."""


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
