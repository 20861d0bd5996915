"""The Celery app: Redis broker, queues (`default`, `gpu`), routes and the beat schedule.

    rlhf-serve worker -Q default,gpu --pool=solo     # one worker for everything
    rlhf-serve worker -Q gpu --pool=solo             # training workers (GPU nodes)
    rlhf-serve worker -Q default                     # cheap workers
    rlhf-serve beat                                  # exactly one, triggers rounds on a schedule
"""

from __future__ import annotations

import logging
import os
import tempfile

from celery import Celery, signals
from kombu import Queue

from rlhf_core import quiet_transformers
from rlhf_core.settings import load_settings
from rlhf_core.tasks import DEFAULT_QUEUE, GPU_QUEUE, REAP_TASK, ROUND_TASK, celery_connection_conf
from training.devices import allow_cudnn_attention

quiet_transformers()
settings = load_settings()
allow_cudnn_attention(settings.cudnn_attention)  # every worker process imports this module (forked ones inherit it)
app = Celery("rlhf", include=["workers.tasks", "workers.maintenance"])
app.conf.update(celery_connection_conf(settings))
app.conf.update(
    task_queues=[Queue(DEFAULT_QUEUE), Queue(GPU_QUEUE)],
    task_default_queue=DEFAULT_QUEUE,
    task_routes={
        "rlhf.train_reward_model": {"queue": GPU_QUEUE},
        "rlhf.run_ppo": {"queue": GPU_QUEUE},
        "rlhf.evaluate": {"queue": GPU_QUEUE},
    },
    task_acks_late=True,  # a task whose worker dies is redelivered, not lost
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=7 * 24 * 3600,
    beat_schedule={
        "training-round": {"task": ROUND_TASK, "schedule": settings.schedule_s,
                           "kwargs": {"force": False, "reason": "schedule"}},
        # workers/maintenance.py: a tick that keeps beat's liveness gauge fresh, registry retention
        "beat-heartbeat": {"task": "rlhf.beat_heartbeat", "schedule": 60.0, "options": {"expires": 60}},
        **({"registry-retention": {"task": "rlhf.prune_registry", "schedule": settings.retention_schedule_s}}
           if settings.retention_schedule_s > 0 else {}),
        "reap-rounds": {"task": REAP_TASK, "schedule": settings.round_reap_interval_s,
                        "options": {"expires": settings.round_reap_interval_s}},
    },
    timezone="UTC",
    # beat's state file (last run times); not in the working directory
    beat_schedule_filename=os.path.join(tempfile.gettempdir(), f"rlhf-beat-{settings.key_prefix.strip(':')}"),
)


@signals.worker_init.connect
def _start_metrics(**_):
    from workers import metrics
    port = metrics.serve(settings.worker_metrics_port)
    if port:
        logging.getLogger(__name__).info("worker metrics on http://0.0.0.0:%s/metrics", port)


@signals.beat_init.connect
def _start_beat_metrics(**_):
    from workers import maintenance
    port = maintenance.serve_beat_metrics(settings.worker_metrics_port)
    if port:
        logging.getLogger(__name__).info("beat metrics on http://0.0.0.0:%s/metrics", port)
