"""Wiring: settings -> parts -> grpc.aio server with health, reflection and /metrics.

`Server` is what the CLI runs and what tests start on a loopback port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from registry import Registry
from registry.operations import Operations
from rlhf.v1 import admin_pb2, admin_pb2_grpc, policy_pb2, policy_pb2_grpc
from rlhf_core import quiet_transformers
from rlhf_core.keys import Keys
from rlhf_core.settings import Settings
from service import tls
from service.admin import AdminServicer
from service.engine import Engine
from service.feedback import FeedbackStore
from service.heartbeat import Heartbeat
from service.interceptors import Authorizer, ServerInterceptor
from service.metrics import Metrics
from service.model_pool import ModelPool
from service.model_watcher import ModelWatcher
from service.policy import PolicyCore
from service.servicer import PolicyServicer
from training.devices import allow_cudnn_attention, resolve_device

log = logging.getLogger("rlhf_serve.server")
SERVICES = ("rlhf.v1.PolicyService", "rlhf.v1.AdminService")
# Health detail: SERVING while the served version is the pointer's, NOT_SERVING while this server
# serves another one (a fallback, or a refused/loading pointer). Probes should check "" instead.
CURRENT_MODEL_HEALTH = "rlhf.v1.CurrentModel"


class Server:
    def __init__(self, settings: Settings):
        quiet_transformers()
        allow_cudnn_attention(settings.cudnn_attention)  # process-wide: this server's process runs its model
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.registry = Registry(settings.registry)
        self.metrics = Metrics()
        self.port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        s = self.settings
        tls.check_admin(s)  # secure by default: no open AdminService unless --insecure-admin
        self.health_server = None
        self.redis = aioredis.Redis.from_url(s.redis_url)
        await self.redis.ping()
        self.pool = ModelPool(self.registry, resolve_device(s.device), s.loaded_versions, s.cpu_packed_weights)
        self.heartbeat = Heartbeat(self.redis, self.keys, self.pool, s.heartbeat_s)
        self.metrics.watch_pool(self.pool)  # issue 7: base copies, adapter load bytes/seconds
        self.watcher = ModelWatcher(self.redis, self.keys, self.registry, self.pool, self.metrics, s.model_poll_s,
                                    s.model_retry_max_s, on_change=self._model_changed)
        self.health = None
        version = await self.watcher.load_initial()
        self.engine = Engine(self.metrics, s.max_batch_size, s.batch_wait_ms, s.max_queue, s.max_tokens_in_flight,
                             s.prefill_step_ratio, s.prefill_first, s.share_prefill,
                             kv_grow_columns=s.kv_grow_columns, prompt_cache_bytes=int(s.prompt_cache_mb * 2**20))
        store = FeedbackStore(self.redis, self.keys, s.generation_ttl_s, s.idempotency_ttl_s, s.recent_prompts)
        core = PolicyCore(s, self.registry, self.pool, self.engine, store, self.metrics)
        self.server = grpc.aio.server(
            interceptors=[ServerInterceptor(self.metrics, Authorizer(s.api_tokens, s.admin_token))],
            options=[("grpc.so_reuseport", 0)])
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(core), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(Operations(s, self.registry, probe=self.pool.load)), self.server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
                 admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.port = tls.bind(self.server, s)
        if s.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(s.metrics_port, s.host)
        self.engine.start()
        self.watcher.start()
        self.heartbeat.start()
        await self.server.start()
        self.health_server, self.health_port = await tls.start_health_server(self.health, s)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._model_changed()
        log.info("gRPC%s listening on %s:%s; metrics on http://%s:%s/metrics; serving model %s",
                 " (TLS)" if s.tls_cert else "", s.host, self.port, s.host, self.metrics_port, version)

    async def _set_health(self, status, names=("",) + SERVICES) -> None:
        for name in names:
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    def _model_changed(self) -> None:
        """The served version or the pointer changed: heartbeat now; update the health detail."""
        self.heartbeat.changed()
        if self.health is not None:
            state = self.pool.state
            ok = self.pool.current is not None and state.pointer == self.pool.current.version
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            asyncio.ensure_future(self._set_health(status, (CURRENT_MODEL_HEALTH,)))

    async def stop(self, grace: float = 30.0) -> None:
        """Graceful: NOT_SERVING for probes, refuse new calls, finish in-flight ones, close Redis."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        stopping = asyncio.ensure_future(self.server.stop(grace))
        await self.engine.stop(grace)
        await stopping
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.watcher.stop()
        await self.heartbeat.stop()
        await self.redis.aclose()
        self.metrics.close()
        log.info("server stopped")


async def serve_forever(settings: Settings) -> None:
    """Runs a server until SIGTERM or SIGINT, then shuts it down gracefully."""
    server = Server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining")
    await server.stop()


class BackgroundServer:
    """A `Server` on its own thread and event loop, for embedding (tests, benchmarks, notebooks).

        srv = BackgroundServer(settings).start()   # blocks until it serves; srv.port is bound
        ...
        srv.stop()                                 # graceful, like SIGTERM
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server = Server(settings)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="rlhf-server", daemon=True)

    @property
    def port(self) -> int | None:
        return self.server.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # re-raised by start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self, timeout: float = 180.0) -> "BackgroundServer":
        self.thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the server did not start in time")
        if self._error:
            raise self._error
        return self

    def call(self, coro, timeout: float = 60):
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 10.0) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.call(self.server.stop(grace), timeout=grace + 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
