"""Follows the current-version pointer and hot-swaps the served model.

The pointer in this process's own Redis database is the only truth. A message on the
deployment's model-events channel is a hint that it may have moved (a message naming something
that is not a version name is ignored); on every hint and every `poll_s` the watcher reads the
pointer and converges to it. A new version is verified, loaded and run once in a background
thread, then swapped in with one reference assignment; a version that fails is refused and the
old one keeps serving.

A refusal is not forever: the version is retried when the pointer is set to it again (the
pointer's epoch moved) or its files change, no sooner than a back-off that doubles from
`poll_s` up to `retry_max_s`. A server whose current version cannot be loaded at start-up serves
the newest loadable ancestor instead, says so (GetModel, health, metrics, heartbeat) and keeps
watching.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

import redis.asyncio as aioredis

from registry import Registry, is_version_name
from registry.pointer import events_channel, lookup_pointer_async
from rlhf_core.keys import Keys
from service.metrics import Metrics
from service.model_pool import ModelPool

log = logging.getLogger(__name__)


@dataclass
class Refusal:
    reason: str  # for operators: what is wrong (no paths)
    epoch: int  # pointer epoch when it was refused
    fingerprint: tuple | None  # its files when it was refused
    failures: int  # consecutive refusals
    retry_at: float  # monotonic time before which it is not retried


def _off_loop(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _reason(exc: BaseException, version: str) -> str:
    """A refusal reason for operators; registry errors already name the version, not paths."""
    text = str(exc) if isinstance(exc, (RuntimeError, ValueError)) else ""
    if isinstance(exc, KeyError):
        return f"{version} is not registered in this server's registry"
    return text or f"{version} cannot be loaded"


class ModelWatcher:
    def __init__(self, client: aioredis.Redis, keys: Keys, registry: Registry, pool: ModelPool,
                 metrics: Metrics, poll_s: float = 2.0, retry_max_s: float = 300.0,
                 on_change: Callable[[], object] | None = None):
        self.r = client
        self.keys = keys
        self.registry = registry
        self.pool = pool
        self.metrics = metrics
        self.poll_s = poll_s
        self.retry_max_s = max(retry_max_s, poll_s)
        self.on_change = on_change
        self.channel = events_channel(client, keys)
        self.refused: dict[str, Refusal] = {}
        self._tasks: list[asyncio.Task] = []
        self._swap_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._last_error = ""

    # --- the pointer -------------------------------------------------------------------------
    async def read_pointer(self) -> tuple[str | None, int]:
        """(version, epoch) from this deployment's database; re-sets a lost pointer to the newest
        promoted version."""
        return await lookup_pointer_async(self.r, self.keys, self.registry)

    async def pointer(self) -> str | None:
        return (await self.read_pointer())[0]

    # --- start-up ----------------------------------------------------------------------------
    async def load_initial(self) -> str:
        """Loads the current version, or its newest loadable ancestor, before the server answers.
        Raises only when nothing at all can be served."""
        version, epoch = await self.read_pointer()
        if not version:
            raise RuntimeError("the registry has no promoted model; run `rlhf-serve bootstrap`")
        if is_version_name(version) and await self._attempt(version, epoch):
            self._publish_state(version)
            return version
        for candidate in await _off_loop(self._fallbacks, version):
            if await self._attempt(candidate, epoch, record=False):
                log.error("current version %s cannot be served (%s); serving its ancestor %s instead",
                          version, self._refusal_text(version), candidate)
                self._publish_state(version)
                return candidate
        raise RuntimeError(f"current version {version[:40]!r} and none of its ancestors can be loaded")

    def _fallbacks(self, version: str) -> list[str]:
        """Ancestors nearest first; for a pointer this registry does not know, the promoted
        versions newest first."""
        if self.registry.exists(version):
            return self.registry.ancestors(version)
        return [v for v in reversed(self.registry.list_versions()) if self.registry.manifest(v).promotion.promoted]

    # --- converging --------------------------------------------------------------------------
    async def sync(self) -> None:
        """Converges the served version to the pointer (on every hint and every poll)."""
        version, epoch = await self.read_pointer()
        if not version:
            return
        if await self._due(version, epoch):
            await self._attempt(version, epoch)
        self._publish_state(version)

    async def _due(self, version: str, epoch: int) -> bool:
        current = self.pool.current
        if not is_version_name(version) or (current is not None and current.version == version):
            return False
        refusal = self.refused.get(version)
        if refusal is None:
            return True
        if time.monotonic() < refusal.retry_at:
            return False
        if epoch != refusal.epoch:
            return True
        return await _off_loop(self.registry.fingerprint, version) != refusal.fingerprint

    async def _attempt(self, version: str, epoch: int, record: bool = True) -> bool:
        """swap_to, remembering a refusal (and counting a retry of an earlier one)."""
        previous = self.refused.get(version)
        fingerprint = await _off_loop(self.registry.fingerprint, version)
        if previous is not None:
            self.metrics.swap_retries.inc()
            log.info("retrying model %s (refused %d time(s): %s)", version, previous.failures, previous.reason)
        if await self.swap_to(version):
            self.refused.pop(version, None)
            return True
        if record:
            failures = previous.failures + 1 if previous else 1
            delay = min(self.retry_max_s, self.poll_s * 2 ** (failures - 1))
            self.refused[version] = Refusal(self._last_error, epoch, fingerprint, failures, time.monotonic() + delay)
        return False

    async def swap_to(self, version: str) -> bool:
        """Loads `version` and makes it current. False (old model kept) if it cannot be served."""
        async with self._swap_lock:
            current = self.pool.current
            if current is not None and current.version == version:
                return True
            started = time.perf_counter()
            try:
                lm = await _off_loop(self.pool.load, version)
            except Exception as exc:
                self._last_error = _reason(exc, version)
                log.warning("refusing model %s (%s); still serving %s", version, self._last_error,
                            current and current.version, exc_info=not isinstance(exc, (KeyError, ValueError)))
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

    def _refusal_text(self, pointer: str) -> str:
        if not is_version_name(pointer):
            return f"the pointer holds {pointer[:40]!r}, which is not a version name"
        refusal = self.refused.get(pointer)
        return refusal.reason if refusal else ""

    def _publish_state(self, pointer: str) -> None:
        """Records served-vs-pointer in the pool's state and the metrics; tells on_change."""
        served = self.pool.current.version if self.pool.current else None
        mismatch = served != pointer
        reason = self._refusal_text(pointer) if mismatch else ""
        state = self.pool.state
        before = (state.pointer, state.refused_reason, state.fallback)
        state.pointer, state.refused_reason, state.fallback = pointer, reason, bool(mismatch and reason)
        self.metrics.pointer_mismatch.set(1 if mismatch else 0)
        self.metrics.model_fallback.set(1 if state.fallback else 0)
        if before != (state.pointer, state.refused_reason, state.fallback) and self.on_change is not None:
            self.on_change()

    # --- background tasks --------------------------------------------------------------------
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
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message.get("data")
                    name = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
                    if is_version_name(name):
                        self._wake.set()  # a hint: the poll loop re-reads the pointer now
                    else:
                        self.metrics.model_events_ignored.inc()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("model-event subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("could not follow the current-version pointer", exc_info=True)
