"""Two deployments on one Redis server (databases 12 and 13, the same key prefix), each with its
own registry: a promotion in one never reaches the other, a model-event message is only a hint,
and a version announced (or even refused) earlier is served once it is really promoted."""

from __future__ import annotations

import time

import pytest
import redis

from registry import Registry
from registry.pointer import events_channel
from rlhf.v1 import admin_pb2, policy_pb2
from rlhf_core.keys import Keys
from tests.helpers import ServerThread, delete_prefix, make_settings, metric_value, publish_model, register_v1, \
    unique_prefix

FAST = dict(model_poll_s=0.3, model_retry_max_s=1.0, heartbeat_s=0.5)


def db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}" if url.count("/") >= 3 else f"{url}/{db}"


def wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


class Deployment:
    def __init__(self, redis_url: str, prefix: str, root, model_dir):
        self.settings = make_settings(redis_url, root, key_prefix=prefix, **FAST)
        self.registry = Registry(root)
        self.model_dir = model_dir
        register_v1(self.settings, model_dir)
        self.redis = redis.Redis.from_url(redis_url)
        self.keys = Keys(prefix)
        self.server = ServerThread(self.settings).start()

    def served(self) -> str:
        return self.server.policy.GetModel(policy_pb2.GetModelRequest(), timeout=20).model_version

    def generate(self) -> str:
        return self.server.policy.Generate(policy_pb2.GenerateRequest(
            prompt="hi", sampling=policy_pb2.SamplingParams(max_new_tokens=3)), timeout=60).model_version

    def metric(self, name: str) -> float:
        return metric_value(self.server.metrics_text(), name)

    def publish(self) -> str:
        return publish_model(self.registry, self.model_dir, parent=self.registry.list_versions()[-1])

    def promote(self, version: str) -> None:
        self.server.admin.Promote(admin_pb2.PromoteRequest(model_version=version), timeout=60)


@pytest.fixture
def pair(redis_url, tiny_model_dir, tmp_path):
    prefix = unique_prefix()
    urls = [db_url(redis_url, 12), db_url(redis_url, 13)]
    made = []
    try:
        for url, name in zip(urls, ("a", "b")):
            made.append(Deployment(url, prefix, tmp_path / name, tiny_model_dir))
        yield made
    finally:
        for d in made:
            d.server.stop()
        for url in urls:
            delete_prefix(url, prefix)


def test_channels_are_scoped_by_prefix_and_database(redis_url):
    a = redis.Redis.from_url(db_url(redis_url, 12))
    b = redis.Redis.from_url(db_url(redis_url, 13))
    keys = Keys("same:")
    assert events_channel(a, keys) != events_channel(b, keys)
    assert events_channel(a, keys) != events_channel(a, Keys("other:"))
    assert events_channel(a, keys).startswith("same:")


def test_two_deployments_on_one_redis_do_not_swap_each_others_models(pair):
    a, b = pair
    assert a.served() == b.served() == "v0001"
    # B promotes its v0002 and v0003: A neither hears nor tries them
    b2, b3 = b.publish(), b.publish()
    b.promote(b2)
    assert wait_for(lambda: b.served() == "v0002")
    b.promote(b3)
    assert wait_for(lambda: b.served() == "v0003")
    time.sleep(1.0)  # several of A's polls
    assert a.served() == "v0001" and a.generate() == "v0001"
    assert a.metric("rlhf_model_swap_failures_total") == 0 and a.metric("rlhf_model_pointer_mismatch") == 0
    # anyone who can PUBLISH on A's own channel only makes A re-read its own pointer
    a.redis.publish(events_channel(a.redis, a.keys), "v0002")
    a.redis.publish(events_channel(a.redis, a.keys), "../../b/versions/v0003")
    assert wait_for(lambda: a.metric("rlhf_model_events_ignored_total") == 1)
    time.sleep(1.0)
    assert a.served() == "v0001" and a.metric("rlhf_model_swap_failures_total") == 0
    # A's pointer even names v0002 before A's registry has it (a refusal): A keeps serving v0001...
    a.redis.set(a.keys.current_version, "v0002")
    assert wait_for(lambda: a.metric("rlhf_model_swap_failures_total") == 1)
    assert a.served() == "v0001" and a.metric("rlhf_model_pointer_mismatch") == 1
    a.redis.set(a.keys.current_version, "v0001")
    assert wait_for(lambda: a.metric("rlhf_model_pointer_mismatch") == 0)
    # ...and when A really publishes and promotes its own v0002, then v0003, both are served
    assert a.publish() == "v0002"
    a.promote("v0002")
    assert wait_for(lambda: a.served() == "v0002") and a.generate() == "v0002"
    assert a.publish() == "v0003"
    a.promote("v0003")
    assert wait_for(lambda: a.served() == "v0003") and a.generate() == "v0003"
    assert a.metric("rlhf_model_pointer_mismatch") == 0
    # B was untouched by all of A's moves
    assert b.served() == "v0003" and b.metric("rlhf_model_swaps_total") == 2
    assert b.metric("rlhf_model_swap_failures_total") == 0
