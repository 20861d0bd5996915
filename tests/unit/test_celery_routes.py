"""Task routing: training stages go to the `gpu` queue, light tasks to `default`."""

from workers.celery_app import app


def queue_of(task: str) -> str:
    route = app.amqp.router.route({}, task)
    return route["queue"].name


def test_training_stages_run_on_gpu_workers():
    assert {queue_of(t) for t in ("rlhf.train_reward_model", "rlhf.run_ppo", "rlhf.evaluate")} == {"gpu"}


def test_light_tasks_run_on_default_workers():
    assert {queue_of(t) for t in ("rlhf.round", "rlhf.snapshot", "rlhf.publish", "rlhf.round_failed")} == {"default"}


def test_tasks_survive_a_dying_worker():
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
