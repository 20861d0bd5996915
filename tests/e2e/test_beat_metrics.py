"""Beat exports its liveness: the time it last published a scheduled task (RlhfBeatDown reads it)."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from rlhf_serve.local import metric_value
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def test_beat_serves_its_last_publish_time(start_beat):
    port = free_port()
    started = time.time()
    beat = start_beat(RLHF_WORKER_METRICS_PORT=str(port), RLHF_SCHEDULE_S="1")
    text = wait_for(lambda: beat.alive() and metric_value(scrape(port), "rlhf_beat_last_publish_timestamp_seconds") > 0
                    and scrape(port), 120, 0.5, "beat's first publish on /metrics")
    first = metric_value(text, "rlhf_beat_last_publish_timestamp_seconds")
    assert started - 1 <= first <= time.time() + 1
    wait_for(lambda: metric_value(scrape(port), "rlhf_beat_last_publish_timestamp_seconds") > first, 30, 0.5,
             "a later publish")
