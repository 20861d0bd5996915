"""What each live server actually serves: a heartbeat per server in Redis.

Every `interval_s` (and whenever what it serves changes) a server writes
`<prefix>servers:<server_id>` (JSON, expiring after 3 intervals) and its time in the ZSET
`<prefix>servers`. `registry.operations.live_servers` (for `models list`/ListModels) reads the
recent members and prunes those whose key expired (a server killed with -9 disappears within 3 intervals).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid

from rlhf_core.keys import Keys
from service.model_pool import ModelPool

log = logging.getLogger(__name__)
TTL_INTERVALS = 3


def new_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Heartbeat:
    def __init__(self, client, keys: Keys, pool: ModelPool, interval_s: float = 5.0):
        self.r = client
        self.keys = keys
        self.pool = pool
        self.interval_s = max(0.1, interval_s)
        self.server_id = new_server_id()
        self.started = time.time()
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def record(self) -> dict:
        state = self.pool.state
        return {"server_id": self.server_id, "host": socket.gethostname(), "started": self.started,
                "model_version": self.pool.current.version if self.pool.current else "",
                "pointer_version": state.pointer or "", "fallback": state.fallback,
                "refused_reason": state.refused_reason, "at": time.time()}

    async def beat(self) -> None:
        rec = self.record()
        ttl_ms = int(self.interval_s * TTL_INTERVALS * 1000)
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.keys.server(self.server_id), json.dumps(rec), px=ttl_ms)
        pipe.zadd(self.keys.servers, {self.server_id: rec["at"]})
        await pipe.execute()

    def changed(self) -> None:
        """Beat now (what this server serves changed)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.delete(self.keys.server(self.server_id))
            pipe.zrem(self.keys.servers, self.server_id)
            await pipe.execute()
        except Exception:
            log.warning("could not remove this server's heartbeat", exc_info=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("heartbeat not written (Redis unreachable?)", exc_info=True)
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
