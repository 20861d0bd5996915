"""A server in this process with sync client stubs: for tests, benchmarks and notebooks.

    with LocalServer(settings).start() as srv:     # a real server on free ports
        srv.policy.Generate(...)
        metric_value(srv.metrics_text(), "rlhf_batch_size_count")
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import redis
from prometheus_client.parser import text_string_to_metric_families

from rlhf.v1 import admin_pb2_grpc, policy_pb2_grpc
from service.app import BackgroundServer

ROOT = Path(__file__).resolve().parents[1]  # this source tree (a detached CeleryChild runs it)


def metric_samples(text: str) -> list:
    """Every sample of a /metrics page, as prometheus_client Sample tuples."""
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0.0 when none)."""
    return sum(s.value for s in metric_samples(text)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def unique_prefix(kind: str = "local") -> str:
    """A Redis key prefix of its own, so runs sharing one Redis never meet."""
    return f"{kind}-{uuid.uuid4().hex[:10]}:"


def delete_prefix(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)


class LocalServer(BackgroundServer):
    """A BackgroundServer plus a channel and stubs on it (`policy`, `admin`).

    An in-process server for tests, benchmarks and notebooks: without an admin token it runs
    with `insecure_admin` (a deployed `rlhf-serve serve` refuses to)."""

    def __init__(self, settings):
        if not settings.admin_token and not settings.insecure_admin:
            settings = settings.model_copy(update={"insecure_admin": True})
        super().__init__(settings)

    def start(self, timeout: float = 180.0) -> "LocalServer":
        super().start(timeout)
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        return self

    def stop(self, grace: float = 10.0) -> None:
        self.channel.close()
        super().stop(grace)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def metrics_text(self, settle_s: float = 5.0) -> str:
        """The /metrics page, once every RPC started has been recorded as handled.

        A call's status reaches the client just before the server records it; waiting for
        started == handled (up to `settle_s`) makes a scrape after a call include that call.
        """
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        end = time.monotonic() + settle_s
        while True:
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
            settled = metric_value(text, "grpc_server_started_total") == metric_value(text, "grpc_server_handled_total")
            if settled or time.monotonic() > end:
                return text
            time.sleep(0.02)


class CeleryChild:
    """`rlhf-serve worker` (or `beat`) in a child process on `settings`' Redis, key prefix and registry:
    the one way tests, benchmarks and `rlhf-serve up` start Celery processes.

    `env` adds or overrides environment variables (e.g. small round settings); `queues` are the
    worker's. Output is appended to `log_path`, else to a new file under `log_dir`, else (neither
    given) it goes to this process's terminal. A `detached` child (tests, benchmarks) runs this source
    tree in a session of its own with the flags of a throw-away process (a hostname of its own, no
    heartbeat/gossip/mingle, beat's schedule file under `log_dir`); `rlhf-serve up` starts attached
    children with Celery's defaults, in its own process group (Ctrl-C reaches them too).
    """

    def __init__(self, kind: str, settings, log_dir=None, env: dict | None = None, queues: str = "default,gpu", *,
                 log_path=None, detached: bool = True):
        full = dict(os.environ, RLHF_REDIS_URL=settings.redis_url, RLHF_KEY_PREFIX=settings.key_prefix,
                    RLHF_REGISTRY=str(settings.registry))
        if detached:
            full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        full.update(env or {})
        stamp = f"{queues if kind == 'worker' else kind}-{time.monotonic_ns()}"
        if log_path is None and log_dir is not None:
            log_path = Path(log_dir) / f"{kind}-{stamp}.log"
        self.log_path = Path(log_path) if log_path is not None else None
        self.log = open(self.log_path, "a") if self.log_path else None
        self.detached = detached
        self.terminated = False  # SIGTERM sent once: `up` terminates all children, then stops each
        args = ["worker", "--pool=solo", "-Q", queues] if kind == "worker" else ["beat"]
        args.append("--loglevel=INFO")
        if detached:
            args += ([f"--hostname={stamp}@%h", "--without-heartbeat", "--without-gossip", "--without-mingle"]
                     if kind == "worker" else ["--schedule", str(Path(log_dir or tempfile.gettempdir()) / f"beat-schedule-{stamp}")])
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf_serve.cli", *args], cwd=ROOT if detached else None,
                                     env=full, stdout=self.log, stderr=subprocess.STDOUT if self.log else None,
                                     start_new_session=detached)

    def alive(self) -> bool:
        """True while running; raises with the log's tail once it exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args[3]} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        return True

    def output(self) -> str:
        """What it logged so far ("" when it writes to the terminal)."""
        if self.log is None:
            return ""
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def _signal(self, sig: int) -> None:
        try:
            if self.detached:
                os.killpg(self.proc.pid, sig)  # the whole session: Celery's own children too
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:  # it exited meanwhile
            pass

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is cleaned up)."""
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM (Celery's warm shutdown), once, without waiting."""
        if self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self._signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (warm shutdown), SIGKILL after `timeout` seconds."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.log is not None:
            self.log.close()
