"""Continuous batching on a real model: rows join and leave the running batch at every step."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import grpc
import pytest
import torch

from service.decoder import EOS, LENGTH, STOP, RowBatch
from service.engine import Engine, Job
from service.errors import ApiError, InvalidArgument
from service.metrics import Metrics
from service.model_pool import load_model_dir
from service.sampling import SamplingSpec
from training.text_format import render_prompt

PROMPTS = ["My order hasn't arrived. What should I do?", "How do I make a cup of tea?", "Hi", "Tell me a joke."]
NEVER = ("\u2603",)  # a stop string the model never produces: rows run to max_new_tokens


def load(model_dir, version):
    """The model with no end-of-sequence token: rows run to max_new_tokens, so timings are predictable."""
    return dataclasses.replace(load_model_dir(model_dir, version, torch.device("cpu")), eos_ids=frozenset())


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load(tiny_model_dir, "v0001")


def prompt_ids(lm, prompt):
    return lm.tokenizer(render_prompt(lm.tokenizer, prompt), add_special_tokens=False)["input_ids"]


async def run_jobs(lm_or_lms, plans, **engine_kwargs):
    """plans: (delay_s, prompt, [SamplingSpec]) or (delay_s, prompt, specs, lm); returns (jobs, outcomes)."""
    engine = Engine(Metrics(), **{"batch_wait_ms": 0.0, **engine_kwargs})
    engine.start()
    jobs = []

    async def one(plan):
        delay, prompt, specs, *model = plan
        await asyncio.sleep(delay)
        lm = model[0] if model else lm_or_lms
        job = Job(lm=lm, prompt_ids=prompt_ids(lm, prompt), specs=specs, stream=asyncio.Queue())
        jobs.append(job)
        return await engine.submit(job)

    outcomes = await asyncio.gather(*(one(p) for p in plans), return_exceptions=True)
    await engine.stop(5)
    for job in jobs:
        assert_stream_spells_the_text(job)
    return jobs, outcomes


def assert_stream_spells_the_text(job):
    """The chunks handed to the job's stream, in order, join to each finished candidate's text."""
    chunks = {}
    while not job.stream.empty():
        index, delta = job.stream.get_nowait()
        chunks.setdefault(index, []).append(delta)
    for i, row in enumerate(job.rows):
        if row.finish in (EOS, LENGTH, STOP):  # cancelled and failed rows may hold text back
            assert "".join(chunks.get(i, [])) == row.text, (i, chunks.get(i), row.text)


def solo_texts(lm, prompt, specs):
    _, outcomes = asyncio.run(run_jobs(lm, [(0, prompt, specs)]))
    return [r.text for r in outcomes[0]]


def test_a_late_request_joins_the_running_batch(lm):
    long_spec = SamplingSpec(max_new_tokens=100, temperature=0.0, stop=NEVER)
    late_spec = SamplingSpec(max_new_tokens=3, temperature=0.0)
    alone_long, alone_late = solo_texts(lm, PROMPTS[0], [long_spec]), solo_texts(lm, PROMPTS[1], [late_spec])

    async def scenario():
        engine = Engine(Metrics(), batch_wait_ms=0.0)
        engine.start()
        long_job = Job(lm=lm, prompt_ids=prompt_ids(lm, PROMPTS[0]), specs=[long_spec])
        long_done = engine.submit(long_job)
        while len(long_job.rows[0].tokens) < 3:  # the long row is decoding: now the late one arrives
            await asyncio.sleep(0.0005)
        late_at = len(long_job.rows[0].tokens)
        late = await engine.submit(Job(lm=lm, prompt_ids=prompt_ids(lm, PROMPTS[1]), specs=[late_spec]))
        left_at = len(long_job.rows[0].tokens)
        rows = await long_done
        await engine.stop(5)
        return rows[0], late[0], late_at, left_at

    long_row, late_row, late_at, left_at = asyncio.run(scenario())
    assert late_at < 100 and left_at < 100  # it joined and left while the long row was still decoding
    assert late_row.token_times[-1] < long_row.token_times[-1]
    assert len(long_row.tokens) == 100
    assert [long_row.text, late_row.text] == alone_long + alone_late  # joining changes no greedy text


def test_seeded_text_is_the_same_alone_and_in_a_busy_batch(lm):
    spec = SamplingSpec(max_new_tokens=24, temperature=1.0, seed=123)
    alone = solo_texts(lm, PROMPTS[0], [spec])
    busy = [(0.0, PROMPTS[2], [SamplingSpec(max_new_tokens=40, seed=1, stop=NEVER)] * 3),
            (0.02, PROMPTS[3], [SamplingSpec(max_new_tokens=5, seed=2)]),
            (0.03, PROMPTS[0], [spec]),
            (0.04, PROMPTS[1], [SamplingSpec(max_new_tokens=30, temperature=1.5, seed=9)] * 2)]
    _, outcomes = asyncio.run(run_jobs(lm, busy))
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    assert outcomes[2][0].text == alone[0]


def test_caps_and_fifo(lm):
    specs = [SamplingSpec(max_new_tokens=8, temperature=0.0, stop=NEVER)]
    metrics_engine = {"max_batch_size": 2}
    jobs, outcomes = asyncio.run(run_jobs(lm, [(0.001 * i, PROMPTS[i % 4], specs) for i in range(6)],
                                          **metrics_engine))
    assert all(len(o[0].tokens) == 8 for o in outcomes)
    firsts = [o[0].first_token_at for o in outcomes]
    assert firsts == sorted(firsts)  # first come, first served
    # at most 2 rows ever ran together: while job i ran, jobs i+2.. had not started
    for i in range(len(outcomes) - 2):
        assert outcomes[i + 2][0].first_token_at > outcomes[i][0].token_times[-1]
    # a token cap: each job reserves prompt + 8 tokens; with room for one job at a time they run one by one
    one_job = len(prompt_ids(lm, PROMPTS[0])) + 8
    _, outcomes = asyncio.run(run_jobs(lm, [(0, PROMPTS[0], specs)] * 3, max_tokens_in_flight=one_job))
    times = sorted((o[0].first_token_at, o[0].token_times[-1]) for o in outcomes)
    assert all(b[0] > a[1] for a, b in zip(times, times[1:]))


@pytest.mark.parametrize("share", [True, False])
def test_a_calls_candidates_share_their_prompts_prefill(lm, share):
    """n candidates of one call run their prompt once (rlhf_prefill_tokens_total vs rlhf_prompt_tokens_total)."""
    specs = [SamplingSpec(max_new_tokens=6, temperature=1.0, seed=s, stop=NEVER) for s in range(3)]

    async def scenario():
        metrics = Metrics()
        engine = Engine(metrics, batch_wait_ms=0.0, share_prefill=share)
        engine.start()
        rows = await engine.submit(Job(lm=lm, prompt_ids=prompt_ids(lm, PROMPTS[0]), specs=specs))
        await engine.stop(5)
        return metrics, rows

    metrics, rows = asyncio.run(scenario())
    sample = lambda name: metrics.registry.get_sample_value(name, {"model_version": "v0001"})  # noqa: E731
    n_prompt = len(prompt_ids(lm, PROMPTS[0]))
    assert sample("rlhf_prompt_tokens_total") == 3 * n_prompt
    assert sample("rlhf_prefill_tokens_total") == (n_prompt if share else 3 * n_prompt)
    assert all(len(r.tokens) == 6 for r in rows) and len({tuple(r.tokens) for r in rows}) > 1


def test_a_failing_row_fails_only_its_own_call(lm):
    bad = SamplingSpec(max_new_tokens=8, temperature=1.0, top_k="many")  # sampling raises TypeError on this row
    normal = [SamplingSpec(max_new_tokens=12, temperature=1.0, seed=s, stop=NEVER) for s in range(3)]
    plans = [(0, PROMPTS[0], normal[:2]), (0, PROMPTS[1], [bad, normal[2]]), (0, PROMPTS[2], normal[2:])]
    _, outcomes = asyncio.run(run_jobs(lm, plans))
    assert isinstance(outcomes[1], InvalidArgument) and "sampling" in outcomes[1].message
    assert [len(r.tokens) for r in outcomes[0]] == [12, 12] and len(outcomes[2][0].tokens) == 12


@pytest.mark.timeout(120)
def test_a_prefill_that_fails_answers_its_call_and_spares_the_running_batch(lm, monkeypatch):
    """The forward pass of a joining prompt fails (say, out of memory) before the batch takes its rows: that call
    is answered with an error (it used to wait forever), the running row carries on to its end."""
    original = RowBatch.prefill
    failing = prompt_ids(lm, PROMPTS[1])

    def prefill(batch, rows, *args):
        if any(r.prompt_ids == failing for r in rows):
            raise RuntimeError("out of memory")
        return original(batch, rows, *args)
    monkeypatch.setattr(RowBatch, "prefill", prefill)
    long_spec = SamplingSpec(max_new_tokens=100, temperature=0.0, stop=NEVER)  # the tiny model's context: 128
    _, outcomes = asyncio.run(run_jobs(lm, [(0, PROMPTS[0], [long_spec]),
                                            (0.02, PROMPTS[1], [SamplingSpec(max_new_tokens=4)] * 2)]))
    assert isinstance(outcomes[1], ApiError) and not isinstance(outcomes[1], InvalidArgument)
    assert outcomes[1].code == grpc.StatusCode.INTERNAL  # what the client sees: INTERNAL, with a retry hint
    assert "the model failed on this prompt" in outcomes[1].message
    assert len(outcomes[0][0].tokens) == 100 and outcomes[0][0].finish == LENGTH


def test_tiny_temperature_beside_normal_requests(lm):
    tiny = SamplingSpec(max_new_tokens=10, temperature=1e-40, stop=NEVER)
    normal = SamplingSpec(max_new_tokens=10, temperature=1.0, seed=5, stop=NEVER)
    _, outcomes = asyncio.run(run_jobs(lm, [(0, PROMPTS[i % 4], [tiny if i % 3 == 0 else normal]) for i in range(9)]))
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    greedy = solo_texts(lm, PROMPTS[0], [SamplingSpec(max_new_tokens=10, temperature=0.0, stop=NEVER)])
    assert outcomes[0][0].text == greedy[0]  # below the floor the temperature is greedy


def test_versions_never_share_a_forward_pass(tiny_model_dir, lm):
    other = load(tiny_model_dir, "v0002")
    seen = {"v0001": [], "v0002": []}
    hooks = [m.model.register_forward_hook(lambda mod, args, kw, out, v=m.version: seen[v].append(
        kw["input_ids"].shape[0]), with_kwargs=True) for m in (lm, other)]
    try:
        spec = SamplingSpec(max_new_tokens=16, temperature=0.0, stop=NEVER)
        plans = [(0, PROMPTS[0], [spec] * 2), (0.01, PROMPTS[1], [spec] * 3, other), (0.02, PROMPTS[2], [spec])]
        jobs, outcomes = asyncio.run(run_jobs(lm, plans))
    finally:
        for h in hooks:
            h.remove()
    assert max(seen["v0001"]) <= 3 and max(seen["v0002"]) <= 3  # v1 has 3 rows, v2 has 3: never 6 together
    assert all(job.lm.version == ("v0002" if i == 1 else "v0001") for i, job in enumerate(jobs))
    assert outcomes[1][0].text == solo_texts(other, PROMPTS[1], [spec])[0]


def test_cancelled_and_expired_rows_stop_at_the_next_step(lm):
    async def scenario():
        engine = Engine(Metrics(), batch_wait_ms=0.0)
        engine.start()
        spec = [SamplingSpec(max_new_tokens=100, temperature=1.0, stop=NEVER)]
        ids = prompt_ids(lm, PROMPTS[0])
        cancel_me = Job(lm=lm, prompt_ids=ids, specs=spec)
        expire_me = Job(lm=lm, prompt_ids=ids, specs=spec, deadline=time.monotonic() + 600)
        keep = Job(lm=lm, prompt_ids=ids, specs=[SamplingSpec(max_new_tokens=30, temperature=1.0, stop=NEVER)])
        late = Job(lm=lm, prompt_ids=ids, specs=spec, deadline=time.monotonic() - 1)  # expired while waiting
        futures = [engine.submit(j) for j in (cancel_me, expire_me, keep, late)]
        while len(cancel_me.rows[0].tokens) < 3:
            await asyncio.sleep(0.0005)
        cancel_me.cancelled.set()
        expire_me.deadline = time.monotonic() - 1  # its deadline passes mid-decoding
        rows = await asyncio.gather(*futures)
        await engine.stop(5)
        return rows

    cancelled, expired, kept, late = asyncio.run(scenario())
    assert cancelled[0].finish == expired[0].finish == late[0].finish == "cancelled"
    assert len(cancelled[0].tokens) < 100 and len(expired[0].tokens) < 100 and not late[0].tokens
    assert kept[0].finish == "length" and len(kept[0].tokens) == 30


class SignallingQueue(asyncio.Queue):
    """A stream that also tells another thread when its first chunk arrived on the event loop."""

    def __init__(self):
        super().__init__()
        self.first_chunk = threading.Event()

    def put_nowait(self, item):
        super().put_nowait(item)
        self.first_chunk.set()


def holding_steps(monkeypatch, wait_for, method: str = "step"):
    """Patches RowBatch.step (or another `method`): before a call on `wait_for`'s version (`(version, event)` or
    None), wait up to 5 s for the event (set on the event loop) and record whether it came while the call waited."""
    seen = []
    original = getattr(RowBatch, method)

    def held(batch, *args):
        target = wait_for()
        if target is not None and batch.lm.version == target[0]:
            seen.append(target[1].wait(5.0))
        return original(batch, *args)
    monkeypatch.setattr(RowBatch, method, held)
    return seen


@pytest.mark.parametrize("held_back", [False, True])
@pytest.mark.parametrize("before", ["step", "merge"])
def test_a_joining_rows_first_token_is_streamed_before_the_running_batch_steps(lm, monkeypatch, before, held_back):
    """Its first chunk reaches the stream before the running batch's next step, and before its cache is merged
    into that batch (a copy of the whole batch's cache); also when the token's text is held back (here by a stop
    string that starts with it): then the first chunk carries no text, and the text follows when it is final."""
    prompt = PROMPTS[1]
    one = next(spec for spec in (SamplingSpec(max_new_tokens=1, temperature=1.0, seed=s, stop=NEVER) for s in range(20))
               if solo_texts(lm, prompt, [spec])[0])  # a seed whose first token alone shows text
    first_text = solo_texts(lm, prompt, [one])[0]
    if held_back:
        one = dataclasses.replace(one, stop=(first_text + NEVER[0],))
    late = {}

    def just_prefilled():  # the late row holds its first token only: the next step is the first after its prefill
        job = late.get("job")
        return ("v0001", job.stream.first_chunk) if job and len(job.rows[0].tokens) == 1 else None
    seen = holding_steps(monkeypatch, just_prefilled, before)

    async def scenario():
        engine = Engine(Metrics(), batch_wait_ms=0.0)
        engine.start()
        long_job = Job(lm=lm, prompt_ids=prompt_ids(lm, PROMPTS[0]),
                       specs=[SamplingSpec(max_new_tokens=60, temperature=0.0, stop=NEVER)])
        long_done = engine.submit(long_job)
        while len(long_job.rows[0].tokens) < 3:
            await asyncio.sleep(0.0005)
        late["job"] = Job(lm=lm, prompt_ids=prompt_ids(lm, prompt), stream=SignallingQueue(),
                          specs=[dataclasses.replace(one, max_new_tokens=4)])
        await engine.submit(late["job"])
        await long_done
        await engine.stop(5)

    asyncio.run(scenario())
    assert seen == [True]  # its first chunk reached the stream while the running batch's next step (merge) waited
    stream = late["job"].stream
    chunks = [stream.get_nowait() for _ in range(stream.qsize())]
    assert chunks[0] == (0, "" if held_back else first_text)
    assert "".join(delta for _, delta in chunks) == late["job"].rows[0].text


def test_a_finished_job_is_answered_before_another_versions_step(tiny_model_dir, lm, monkeypatch):
    other = load(tiny_model_dir, "v0002")
    answered, jobs = threading.Event(), {}
    seen = holding_steps(monkeypatch, lambda: ("v0002", answered) if "short" in jobs and jobs["short"].rows[0].finish
                         else None)  # v0001's job has finished: wait for its answer before v0002 steps

    async def scenario():
        engine = Engine(Metrics(), batch_wait_ms=0.0)
        engine.start()
        spec = SamplingSpec(max_new_tokens=2, temperature=0.0, stop=NEVER)
        jobs["short"] = Job(lm=lm, prompt_ids=prompt_ids(lm, PROMPTS[0]), specs=[spec])
        long_other = Job(lm=other, prompt_ids=prompt_ids(other, PROMPTS[1]),
                         specs=[dataclasses.replace(spec, max_new_tokens=40)])
        done = [engine.submit(jobs["short"]), engine.submit(long_other)]  # one iteration steps v0001, then v0002
        done[0].add_done_callback(lambda _: answered.set())
        await asyncio.gather(*done)
        await engine.stop(5)

    asyncio.run(scenario())
    assert seen and seen[0] is True  # v0001's answer was out while v0002's next step waited


@pytest.mark.parametrize("prefill_first", [True, False])
def test_a_request_that_arrives_during_a_prefill_joins_before_the_step_with_prefill_first(lm, monkeypatch,
                                                                                           prefill_first):
    order, loop_box, queued = [], {}, threading.Event()
    original_prefill, original_step = RowBatch.prefill, RowBatch.step
    spec = SamplingSpec(max_new_tokens=6, temperature=0.0, stop=NEVER)
    late = {}

    def prefill(batch, rows, *args):
        name = "late" if rows[0].prompt_ids == prompt_ids(lm, PROMPTS[2]) else "first"
        if name == "first" and "job" not in late:  # while this prefill runs, another request arrives
            loop_box["loop"].call_soon_threadsafe(loop_box["submit"])
            assert queued.wait(5.0)
        order.append(f"prefill {name}")
        return original_prefill(batch, rows, *args)

    def step(batch):
        order.append("step")
        return original_step(batch)
    monkeypatch.setattr(RowBatch, "prefill", prefill)
    monkeypatch.setattr(RowBatch, "step", step)

    async def scenario():
        engine = Engine(Metrics(), batch_wait_ms=0.0, prefill_first=prefill_first)
        engine.start()
        done = []

        def submit_late():
            late["job"] = Job(lm=lm, prompt_ids=prompt_ids(lm, PROMPTS[2]), specs=[spec])
            done.append(engine.submit(late["job"]))
            queued.set()
        loop_box.update(loop=asyncio.get_running_loop(), submit=submit_late)
        first = engine.submit(Job(lm=lm, prompt_ids=prompt_ids(lm, PROMPTS[0]), specs=[spec]))
        await first
        await asyncio.gather(*done)
        await engine.stop(5)

    asyncio.run(scenario())
    expected = ["prefill first", "prefill late", "step"] if prefill_first else ["prefill first", "step", "prefill late"]
    assert order[:3] == expected
    assert late["job"].rows[0].finish == LENGTH and len(late["job"].rows[0].tokens) == 6
