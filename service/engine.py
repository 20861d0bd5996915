"""The batching scheduler: collects concurrent generation jobs into batches and decodes them.

Jobs wait in a bounded queue; the scheduler takes the first, then waits up to `batch_wait_ms`
for more jobs on the same model version until `max_batch_size` candidates are collected, and
decodes the batch in one worker thread (the event loop never runs the model). Cancelled or
expired jobs stop consuming compute at the next decoding step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.decoder import LoadedModel, Row, decode_batch
from service.metrics import Metrics
from service.sampling import SamplingSpec

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The engine's queue is at capacity."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new work."""


@dataclass
class Job:
    """One Generate call: `len(specs)` candidates of one prompt on one model version."""

    lm: LoadedModel
    prompt_ids: list[int]
    specs: list[SamplingSpec]
    deadline: float | None = None  # time.monotonic() after which the job is abandoned
    stream: asyncio.Queue | None = None  # receives (index, text_delta) while decoding
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)
    rows: list[Row] = field(default_factory=list)
    done: asyncio.Future | None = None

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)


class Engine:
    def __init__(self, metrics: Metrics, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
                 max_queue: int = 256):
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._carry: collections.deque[Job] = collections.deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._task: asyncio.Task | None = None
        self._accepting = True
        self._busy = False

    @property
    def depth(self) -> int:
        return self._queue.qsize() + len(self._carry)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine")

    def submit(self, job: Job) -> asyncio.Future:
        """Queues a job; its future resolves when every candidate is finished."""
        if not self._accepting:
            raise EngineStopped("server is shutting down")
        if self.depth >= self.max_queue:
            raise QueueFull(f"generation queue is full ({self.max_queue} requests waiting)")
        loop = asyncio.get_running_loop()
        job.done = loop.create_future()
        job.rows = [self._make_row(job, i, spec, loop) for i, spec in enumerate(job.specs)]
        self._queue.put_nowait(job)
        self.metrics.queue_depth.set(self.depth)
        return job.done

    def _make_row(self, job: Job, index: int, spec: SamplingSpec, loop) -> Row:
        def on_delta(delta: str) -> None:
            if job.stream is not None:
                loop.call_soon_threadsafe(job.stream.put_nowait, (index, delta))
        def on_finished(_row: Row) -> None:
            if all(r.finish for r in job.rows):  # the job's last candidate: answer without waiting for the batch
                loop.call_soon_threadsafe(self._finish, job)
        return Row(prompt_ids=job.prompt_ids, spec=spec, on_delta=on_delta, is_cancelled=job.is_cancelled,
                   on_finished=on_finished)

    async def stop(self, grace: float = 30.0) -> None:
        """Stops accepting work, lets queued and running jobs finish (up to `grace` seconds)."""
        self._accepting = False
        end = time.monotonic() + grace
        while (self.depth or self._busy) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _next_job(self, timeout: float | None) -> Job | None:
        if self._carry:
            return self._carry.popleft()
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout) if timeout > 0 else self._queue.get_nowait()
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            return None

    async def _collect(self) -> list[Job]:
        """A batch: jobs on one model version with at most max_batch_size candidates."""
        first = await self._next_job(None)
        self._busy = True  # a job has left the queue: stop() must wait for it (it is no longer in `depth`)
        batch, size = [first], len(first.specs)
        end = time.perf_counter() + self.batch_wait
        while size < self.max_batch_size:
            job = await self._next_job(end - time.perf_counter())
            if job is None:
                break
            if job.lm is not first.lm or size + len(job.specs) > self.max_batch_size:
                self._carry.appendleft(job)
                break
            batch.append(job)
            size += len(job.specs)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [j for j in batch if not j.is_cancelled()]
            for job in batch:
                if job not in live:
                    self._finish(job, cancelled=True)
            self.metrics.queue_depth.set(self.depth)
            if not live:
                self._busy = False
                continue
            try:
                await loop.run_in_executor(self._executor, self._decode, live)
            except Exception as exc:  # a model failure fails the batch, never the server
                log.exception("decoding failed")
                for job in live:
                    if not job.done.done():
                        job.done.set_exception(exc)
            for job in live:
                self._finish(job)
            self._busy = False

    def _decode(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        rows = [row for job in jobs for row in job.rows]
        version = jobs[0].lm.version
        self.metrics.batch_size.observe(len(rows))
        for job in jobs:
            self.metrics.queue_time.labels(version).observe(started - job.enqueued_at)
        self.metrics.running.inc(len(rows))
        try:
            decode_batch(jobs[0].lm, rows)
        finally:
            self.metrics.running.dec(len(rows))
        self.metrics.observe_rows(version, jobs, rows)

    def _finish(self, job: Job, cancelled: bool = False) -> None:
        if job.done is not None and not job.done.done():
            if cancelled:
                for row in job.rows:
                    row.finish = row.finish or "cancelled"
            job.done.set_result(job.rows)
