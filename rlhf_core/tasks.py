"""Names of the Celery tasks and queues (the contract between senders and workers).

Senders (the admin RPC, the CLI) queue tasks by name, so they never import workers/.
"""

ROUND_TASK = "rlhf.round"
"""Starts one training round: snapshot feedback -> reward model -> PPO -> evaluate -> publish."""

REAP_TASK = "rlhf.reap_rounds"
"""Records rounds whose worker died (heartbeat silent, lock lapsed) as abandoned (beat schedules it)."""

DEFAULT_QUEUE = "default"
"""Light tasks: snapshots, evaluation bookkeeping, publishing, scheduling."""

GPU_QUEUE = "gpu"
"""Training tasks (reward model, PPO): run GPU workers with `-Q gpu`."""


def celery_connection_conf(settings) -> dict:
    """Broker/backend settings shared by workers and by senders (so both use the same keys)."""
    prefix = {"global_keyprefix": settings.key_prefix + "celery:"}
    return dict(broker_url=settings.redis_url, result_backend=settings.redis_url,
                broker_transport_options=prefix, result_backend_transport_options=prefix,
                broker_connection_retry_on_startup=True)


def make_sender(settings):
    """A Celery client that queues tasks by name (it imports nothing from workers/)."""
    from celery import Celery

    app = Celery("rlhf-sender")
    app.conf.update(celery_connection_conf(settings))
    return app
