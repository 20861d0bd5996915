"""Beat's maintenance entries: the heartbeat that keeps beat's liveness metric fresh, and retention."""

from workers.celery_app import app
from workers.maintenance import HEARTBEAT_TASK, PRUNE_TASK


def test_beat_schedules_heartbeat_and_retention_on_default_workers():
    tasks = {entry["task"]: entry for entry in app.conf.beat_schedule.values()}
    assert tasks[HEARTBEAT_TASK]["schedule"] <= 60  # the RlhfBeatDown alert allows 5 minutes
    assert tasks[PRUNE_TASK]["schedule"] > 0
    for name in (HEARTBEAT_TASK, PRUNE_TASK):
        assert name in app.tasks
        assert app.amqp.router.route({}, name)["queue"].name == "default"
