"""The serving engine: continuous batching with iteration-level scheduling (Orca, vLLM).

One decode loop runs in a worker thread (the event loop never runs the model). At every decoding
step, rows that finished, were cancelled or passed their deadline leave the batch (their KV cache
is freed with them), and waiting jobs join: their prompts are prefilled together, their first
tokens sampled, and their cache merged into the running batch before the next step. What the decode
thread produces (stream chunks, answers) is handed to the event loop in one wake-up after each prefill
and after each version's step: a joining row's first token does not wait for its merge into the running batch
nor for that batch's step (it goes out even when its text is not final yet: service/decoder.py), nor one version's
answer for another version's step.

Admission is FIFO: the oldest waiting job joins first, and none overtakes it, so nothing starves.
Optionally (`prefill_step_ratio` > 0), while rows are running the prompts prefilled in one
iteration are limited to about that many decoding steps' worth of time (measured as it runs; at
least one job per iteration), so that running rows keep their pace. Off by default: on CPU it
measured worse (single-prompt prefills cost nearly as much as batched ones; see the benchmark).
With `prefill_first`, the jobs that arrived while an iteration's joiners were prefilled are admitted and
prefilled too before that iteration's step (once: running rows still step every iteration), so that a
burst split by its arrival times does not wait a step between its halves.
A call's n candidates share their prompt's prefill (one forward pass, the KV cache copied to each row), and
so do identical prompts joining in one step (`share_prefill`, on by default; `rlhf_prefill_tokens_total` against
`rlhf_prompt_tokens_total` shows what it saves). A prompt prefilled earlier on the same version is copied from
the prompt cache instead of run, and one that starts like a kept prompt runs only the rest (`prompt_cache_bytes`,
service/prompt_cache.py; with `share_prefill` only).
A job joins while the batch has room (`max_batch_size` rows) and while the tokens its rows may come
to hold (prompt + max_new_tokens each) fit in `max_tokens_in_flight`; a job larger than the caps
runs alone. Jobs waiting beyond `max_queue` are refused (QueueFull -> RESOURCE_EXHAUSTED).

Rows of different model versions never share a forward pass: each version has its own RowBatch,
stepped in turn, so rows of an old version finish on the old weights while new ones start on the
new. A row that fails fails only its own job.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from service.decoder import CANCELLED, ERROR, GROW_COLUMNS, LoadedModel, Row, RowBatch
from service.errors import ApiError, InvalidArgument
from service.metrics import Metrics
from service.prompt_cache import PromptCache
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
    reported: bool = False  # its metrics are observed once, by the first row to see every row finished

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)


def _deliver(outbox: list[tuple]) -> None:
    """On the event loop: runs the decode thread's hand-overs in the order they were made."""
    for fn, *args in outbox:
        try:
            fn(*args)
        except Exception:  # one caller's hand-over must not cost the others theirs
            log.exception("delivering a generation result failed")


class Engine:
    def __init__(self, metrics: Metrics, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
                 max_queue: int = 256, max_tokens_in_flight: int = 65536, prefill_step_ratio: float = 0.0,
                 prefill_first: bool = False, share_prefill: bool = True, kv_grow_columns: int = GROW_COLUMNS,
                 prompt_cache_bytes: int = 0):
        self.metrics = metrics
        self.max_batch_size = max(1, max_batch_size)
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_tokens_in_flight = max_tokens_in_flight
        self.prefill_step_ratio = prefill_step_ratio
        self.prefill_first = prefill_first
        self.share_prefill = share_prefill
        self.kv_grow_columns = kv_grow_columns
        self.prompt_cache = PromptCache(prompt_cache_bytes)  # decode thread only
        metrics.prompt_cache_bytes.set_function(lambda: self.prompt_cache.bytes)
        self._step_s = 0.0  # running mean of a decoding step's duration
        self._prefill_token_s = 0.0  # running mean of prefill time per prompt token
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._batches: dict[int, RowBatch] = {}  # id(LoadedModel) -> its running rows
        self._rows_in_flight = 0
        self._tokens_reserved = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = True
        self._halt = False
        self._outbox: list[tuple] = []  # (fn, *args) for the event loop, handed over after each prefill and step

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self._waiting) or self._rows_in_flight > 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> asyncio.Future:
        """Queues a job; its future resolves when every candidate is finished."""
        if not self._accepting:
            raise EngineStopped("server is shutting down")
        if self.depth >= self.max_queue:
            raise QueueFull(f"generation queue is full ({self.max_queue} requests waiting)")
        loop = asyncio.get_running_loop()
        job.done = loop.create_future()
        job.rows = [self._make_row(job, i, spec) for i, spec in enumerate(job.specs)]
        with self._wake:
            self._waiting.append(job)
            self._wake.notify()
        self.metrics.queue_depth.set(self.depth)
        return job.done

    def _make_row(self, job: Job, index: int, spec: SamplingSpec) -> Row:
        def on_delta(delta: str) -> None:
            if job.stream is not None:
                self._outbox.append((job.stream.put_nowait, (index, delta)))

        def on_finished(row: Row) -> None:
            if row.finish == ERROR:
                job.cancelled.set()  # its sibling candidates stop at the next step
            if all(r.finish for r in job.rows) and not job.reported:  # answered at the end of this iteration
                job.reported = True  # rows finishing in one step each see the job complete: report it once
                self.metrics.observe_job(job.lm.version, job)
                self._outbox.append((self._finish, job))
        return Row(prompt_ids=job.prompt_ids, spec=spec, on_delta=on_delta, is_cancelled=job.is_cancelled,
                   on_finished=on_finished)

    async def stop(self, grace: float = 30.0) -> None:
        """Stops accepting work, lets queued and running jobs finish (up to `grace` seconds)."""
        self._accepting = False
        end = time.monotonic() + grace
        while self.busy and time.monotonic() < end:
            await asyncio.sleep(0.02)
        with self._wake:
            self._halt = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)

    # --- the decode thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._rows_in_flight and not self._halt:
                    self._wake.wait()
                if self._halt:
                    break
                idle = not self._rows_in_flight
            if idle and self.batch_wait > 0:
                time.sleep(self.batch_wait)  # an idle engine gathers the first burst into one prefill
            try:
                self._iteration()
            except Exception:  # never lose the decode thread
                log.exception("engine iteration failed")
            finally:
                self._flush()
        self._abandon()
        self._flush()

    def _flush(self) -> None:
        """Hands the chunks and answers made since the last flush to the event loop in one wake-up (in
        order), not one cross-thread call per row and token: after each prefill and each version's step."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_deliver, outbox)

    def _iteration(self) -> None:
        joining = self._admit()
        for key, jobs in joining.items():
            self._join(key, jobs)
        if self.prefill_first and joining:  # requests that came during that prefill do not wait for the step
            for key, jobs in self._admit().items():
                self._join(key, jobs)
        for key in list(self._batches):
            self._step(key)
            self._flush()  # a version's answers and chunks do not wait for the other versions' steps
        self._rows_in_flight = sum(len(b) for b in self._batches.values())
        self.metrics.running.set(self._rows_in_flight)
        self.metrics.tokens_in_flight.set(sum(b.tokens_in_cache for b in self._batches.values()))
        self.metrics.queue_depth.set(self.depth)

    def _admit(self) -> dict[int, list[Job]]:
        """Waiting jobs that join now (FIFO within the caps), grouped by model version."""
        joining: dict[int, list[Job]] = {}
        now = time.perf_counter()
        rows = sum(len(b) for b in self._batches.values())
        budget = self._prefill_budget() if rows else None  # prompt tokens to prefill now
        with self._wake:
            for job in [j for j in self._waiting if j.is_cancelled()]:
                self._waiting.remove(job)
                self._outbox.append((self._finish, job, True))  # answered with the next flush
            while self._waiting:
                job = self._waiting[0]
                need = sum(r.reserved_tokens for r in job.rows)
                empty = rows == 0 and not joining
                fits = (rows + len(job.rows) <= self.max_batch_size
                        and self._tokens_reserved + need <= self.max_tokens_in_flight)
                if not (fits or empty):
                    break  # the head waits for room; nobody overtakes it
                if budget is not None:
                    cost = len(job.prompt_ids) * (1 if self.share_prefill else len(job.rows))
                    if joining and cost > budget:
                        break  # this iteration's prefill is full: it joins at the next step
                    budget -= cost
                self._waiting.popleft()
                rows += len(job.rows)
                self._tokens_reserved += need
                joining.setdefault(id(job.lm), []).append(job)
                self.metrics.queue_time.labels(job.lm.version).observe(now - job.enqueued_at)
            self._rows_in_flight = rows  # counted before the lock is released: stop() sees them as busy
        return joining

    def _prefill_budget(self) -> float | None:
        if not (self._step_s and self._prefill_token_s and self.prefill_step_ratio > 0):
            return None
        return self.prefill_step_ratio * self._step_s / self._prefill_token_s

    @staticmethod
    def _mean(old: float, new: float) -> float:
        return new if not old else 0.8 * old + 0.2 * new

    def _join(self, key: int, jobs: list[Job]) -> None:
        """Prefills `jobs` (first tokens sampled and handed over) and merges them into their version's batch."""
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = RowBatch(jobs[0].lm, self.kv_grow_columns)
        self._release(batch.release())
        fresh = RowBatch(batch.lm, self.kv_grow_columns)
        rows = [r for job in jobs for r in job.rows]
        started = time.perf_counter()
        queried, hit = self.prompt_cache.query_tokens, self.prompt_cache.hit_tokens
        try:
            tokens = fresh.prefill(rows, self.share_prefill, self.prompt_cache)
            if tokens:  # a prefill served from the prompt cache alone says nothing of the model's speed
                self._prefill_token_s = self._mean(self._prefill_token_s, (time.perf_counter() - started) / tokens)
            self.metrics.prefill_tokens.labels(batch.lm.version).inc(tokens)
        except Exception:
            log.exception("prefill failed on %s", batch.lm.version)
            fresh.rows = rows  # a forward pass that failed before the batch took its rows: they are answered too
            fresh.fail("the model failed on this prompt; retry, or report it if it persists")
        self._count_cache(batch.lm.version, queried, hit)  # the lookups happened, whether or not the forward failed
        self._release(fresh.release())
        self._flush()  # the joining rows' first tokens go out now: not after the merge's copy, nor the batch's step
        batch.merge(fresh)

    def _count_cache(self, version: str, queried: int, hit: int) -> None:
        """Adds the prompt-cache tokens looked up and found since (queried, hit) were read to the metrics."""
        cache = self.prompt_cache
        if cache.enabled:
            self.metrics.prompt_cache_queries.labels(version).inc(cache.query_tokens - queried)
            self.metrics.prompt_cache_hits.labels(version).inc(cache.hit_tokens - hit)

    def _step(self, key: int) -> None:
        """One decoding step of the version's batch; finished rows leave it (and an empty batch goes)."""
        batch = self._batches[key]
        self._release(batch.release())
        if batch.rows:
            self.metrics.batch_size.observe(len(batch))
            started = time.perf_counter()
            try:
                batch.step()
                self._step_s = self._mean(self._step_s, time.perf_counter() - started)
            except Exception:
                log.exception("decoding step failed on %s", batch.lm.version)
                batch.fail("the model failed while decoding; retry, or report it if it persists")
            self._release(batch.release())
        if not batch.rows:
            del self._batches[key]

    def _release(self, rows: list[Row]) -> None:
        self._tokens_reserved -= sum(r.reserved_tokens for r in rows)

    def _abandon(self) -> None:
        """After a forced stop: every waiting or running job ends as cancelled."""
        with self._wake:
            jobs, self._waiting = list(self._waiting), collections.deque()
        for batch in self._batches.values():
            for row in batch.rows:
                row.finish = row.finish or CANCELLED
            batch.release()  # each row's job is answered (as cancelled)
        self._batches.clear()
        for job in jobs:
            self._outbox.append((self._finish, job, True))  # _run flushes after this

    def _finish(self, job: Job, cancelled: bool = False) -> None:
        if job.done is None or job.done.done():
            return
        failed = [r for r in job.rows if r.finish == ERROR]
        if failed:
            cls = InvalidArgument if any(r.bad_settings for r in failed) else ApiError
            job.done.set_exception(cls(failed[0].error or "generation failed"))
            job.done.exception()  # retrieved here: a caller that went away leaves no warning behind
            return
        if cancelled:
            for row in job.rows:
                row.finish = row.finish or "cancelled"
        job.done.set_result(job.rows)
