"""A server in this process with sync stubs, for benchmarks that measure the service itself."""

from __future__ import annotations

import urllib.request
import uuid

import grpc
import redis
from prometheus_client.parser import text_string_to_metric_families

from rlhf.v1 import admin_pb2_grpc, policy_pb2_grpc
from service.app import BackgroundServer


class LocalServer(BackgroundServer):
    def start(self, timeout: float = 180.0) -> "LocalServer":
        super().start(timeout)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        return self

    def stop(self, grace: float = 10.0) -> None:
        self.channel.close()
        super().stop(grace)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read().decode()


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def unique_prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}:"


def delete_prefix(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)
