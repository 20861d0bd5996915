"""The `rlhf-serve` command line as an operator uses it: serve + SIGTERM, bootstrap, models."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from registry import Registry
from rlhf.v1 import policy_pb2, policy_pb2_grpc
from tests.helpers import publish_model

ROOT = Path(__file__).resolve().parents[2]


def cli(settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_serve.cli", *args, "--redis-url", settings.redis_url,
                           "--registry", str(settings.registry), "--key-prefix", settings.key_prefix],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_serve_answers_then_drains_on_sigterm(settings, registry_v1):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_serve.cli", "serve", "--port", "0", "--metrics-port", "0", "--host", "127.0.0.1",
         "--insecure-admin",
         "--redis-url", settings.redis_url, "--registry", str(settings.registry), "--key-prefix", settings.key_prefix],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "server exited early:\n" + "".join(lines)
            lines.append(line)
            match = re.search(r"gRPC listening on [\d.]+:(\d+); metrics on http://[\d.]+:(\d+)/metrics", line)
            port = match and int(match.group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            future = stub.Generate.future(policy_pb2.GenerateRequest(
                prompt="Where is my refund?", sampling=policy_pb2.SamplingParams(max_new_tokens=40)), timeout=60)
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert future.result().model_version == "v0001"  # in flight at SIGTERM: finished, not dropped
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert "server stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bootstrap_registers_a_local_model_once(settings, tiny_model_dir):
    first = cli(settings, "bootstrap", "--base-model", str(tiny_model_dir))
    assert first.returncode == 0, first.stderr
    assert "current model: v0001" in first.stdout
    again = cli(settings, "bootstrap", "--base-model", str(tiny_model_dir))
    assert "current model: v0001" in again.stdout
    registry = Registry(settings.registry)
    assert registry.list_versions() == ["v0001"]  # idempotent: nothing rebuilt or re-registered
    assert registry.manifest("v0001").base_model == str(tiny_model_dir)


def test_bootstrap_refuses_a_directory_that_is_not_a_model(settings, tmp_path):
    result = cli(settings, "bootstrap", "--base-model", str(tmp_path))
    assert result.returncode != 0
    assert "not a Hugging Face model directory" in result.stderr


def test_models_list_promote_rollback(settings, registry_v1, tiny_model_dir):
    publish_model(registry_v1, tiny_model_dir, parent="v0001", promoted=False, description="candidate")
    listing = cli(settings, "models", "list")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^\* v0001", listing.stdout, re.M) and re.search(r"^  v0002 .*candidate", listing.stdout, re.M)
    promoted = cli(settings, "models", "promote", "v0002")
    assert promoted.returncode == 0 and '"current": true' in promoted.stdout
    assert re.search(r"^\* v0002", cli(settings, "models", "list").stdout, re.M)
    rolled = cli(settings, "models", "rollback")
    assert rolled.returncode == 0 and '"modelVersion": "v0001"' in rolled.stdout
    missing = cli(settings, "models", "promote", "v0042")
    assert missing.returncode == 2 and "not registered" in missing.stderr
