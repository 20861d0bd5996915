"""Follows the current-version pointer and hot-swaps the served model.

Listens on the pub/sub channel for promotions and also polls the pointer (a message can be
missed while reconnecting). A new version is verified and loaded in a background thread, then
swapped in with one reference assignment; a version that fails verification is refused and the
old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from registry import Registry
from rlhf_serve.keys import Keys
from service.metrics import Metrics
from service.model_pool import ModelPool

log = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(self, client: aioredis.Redis, keys: Keys, registry: Registry, pool: ModelPool,
                 metrics: Metrics, poll_s: float = 2.0):
        self.r = client
        self.keys = keys
        self.registry = registry
        self.pool = pool
        self.metrics = metrics
        self.poll_s = poll_s
        self.refused: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._swap_lock = asyncio.Lock()

    async def pointer(self) -> str | None:
        value = await self.r.get(self.keys.current_version)
        if value:
            return value.decode()
        fallback = await asyncio.get_running_loop().run_in_executor(None, self.registry.latest_promoted)
        if fallback:
            await self.r.set(self.keys.current_version, fallback, nx=True)
        return fallback

    async def load_initial(self) -> str:
        """Loads the current version before the server starts answering (raises if none)."""
        version = await self.pointer()
        if not version:
            raise RuntimeError(f"the registry at {self.registry.root} has no promoted model; run `rlhf-serve bootstrap`")
        if not await self.swap_to(version):
            raise RuntimeError(f"current version {version} cannot be loaded")
        return version

    async def swap_to(self, version: str) -> bool:
        """Loads `version` and makes it current. False (old model kept) if it cannot be served."""
        async with self._swap_lock:
            current = self.pool.current
            if current is not None and current.version == version:
                return True
            if version in self.refused:
                return False
            started = time.perf_counter()
            try:
                lm = await asyncio.get_running_loop().run_in_executor(None, self.pool.load, version)
            except Exception:
                log.exception("refusing model %s; still serving %s", version, current and current.version)
                self.refused.add(version)
                self.metrics.swap_failures.inc()
                return False
            self.pool.set_current(lm)
            seconds = time.perf_counter() - started
            self.metrics.set_served_version(version)
            if current is not None:
                self.metrics.swaps.inc()
                self.metrics.swap_seconds.observe(seconds)
                log.info("hot-swapped %s -> %s in %.2fs", current.version, version, seconds)
            return True

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._poll())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.r.pubsub()
                await pubsub.subscribe(self.keys.model_events)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self.swap_to(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("model-event subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                version = await self.pointer()
                if version:
                    await self.swap_to(version)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("could not read the current-version pointer", exc_info=True)
