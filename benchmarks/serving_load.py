"""Load generators and reference loops for benchmarks/serving.py.

- `closed_loop` / `open_loop`: streaming GenerateStream clients (grpc.aio, one thread, so the
  client costs little CPU) against a running server; each call records TTFT, latency, tokens.
- `naive_generate`: the naive baseline, Hugging Face `generate`, one request at a time.
- `bare_loop`: the roofline, the batched forward loop with a KV cache and no server at all.
- `random_gpt2_dir`: a randomly initialised GPT-2-small shape (12 x 768) with the built-in tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import torch

from rlhf.v1 import policy_pb2, policy_pb2_grpc

PROMPTS = ["My order hasn't arrived. What should I do?", "How do I reset my password?",
           "Can you recommend a good book?", "How do I make a cup of tea?"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _call(stub, req, results: list) -> None:
    started = time.perf_counter()
    first, tokens, error, arrivals = None, 0, None, []
    try:
        async for chunk in stub.GenerateStream(req, timeout=600):
            now = time.perf_counter()
            if first is None:
                first = now
            tokens += chunk.num_tokens  # set on a candidate's last chunk only
            if chunk.text_delta:
                arrivals.append(now)  # one decoding step's new text of one candidate
    except grpc.aio.AioRpcError as exc:
        error = exc.code().name
    ended = time.perf_counter()
    results.append({"start": started, "end": ended, "ttft": (first or ended) - started, "latency": ended - started,
                    "tokens": tokens, "error": error, "max_new": req.sampling.max_new_tokens, "arrivals": arrivals})


def tokens_delivered(results: list[dict], lo: float, hi: float) -> float:
    """Tokens that reached their clients between `lo` and `hi` (successful calls), whenever the call
    started or ended: a call's tokens are spread over its text chunks (one per decoding step that
    added text) and the window counts the share of chunks it saw, so lockstep cycles straddling its
    end are not dropped (counting the calls that ended in it undercounted by up to a whole cycle)."""
    total = 0.0
    for r in results:
        if r["error"] is not None:
            continue
        times = r["arrivals"] or [r["end"]]
        total += r["tokens"] * sum(lo <= t <= hi for t in times) / len(times)
    return total


def request(i: int, max_new: int, prompt: str | None = None) -> policy_pb2.GenerateRequest:
    return policy_pb2.GenerateRequest(prompt=prompt or PROMPTS[i % len(PROMPTS)], sampling=policy_pb2.SamplingParams(
        max_new_tokens=max_new, temperature=1.0, seed=i))


def client_prompt(prompts: str, client: int, call: int, clients: int) -> str | None:
    """"shared": None (request() sends PROMPTS[call % 4]: clients at the same call send the same one);
    "distinct": a prompt of the dataset's train split (80) that no other client sends at the same time, whatever call each is at
    (client + clients x call mod 80: for up to 16 clients, equal only for the same client)."""
    if prompts == "shared":
        return None
    from training.text_format import train_prompts
    pool = train_prompts()
    return pool[(client + clients * call) % len(pool)]


def summarise(results: list[dict], window: tuple[float, float] | None = None) -> dict:
    """Figures over calls that started in `window`; throughput: tokens delivered in it (any call), and
    calls that ended in it."""
    lo, hi = window or (min(r["start"] for r in results), max(r["end"] for r in results))
    started = [r for r in results if lo <= r["start"] <= hi]
    ok = [r for r in started if r["error"] is None]
    wall = hi - lo
    ended = [r for r in results if r["error"] is None and lo <= r["end"] <= hi]
    return {"requests": len(started), "errors": len(started) - len(ok), "wall_s": wall,
            "tokens_per_s": tokens_delivered(results, lo, hi) / wall, "requests_per_s": len(ended) / wall,
            "ttft_mean_s": statistics.fmean([r["ttft"] for r in ok]) if ok else float("nan"),
            "ttft_p50_s": percentile([r["ttft"] for r in ok], 0.5),
            "ttft_p99_s": percentile([r["ttft"] for r in ok], 0.99),
            "latency_p50_s": percentile([r["latency"] for r in ok], 0.5),
            "latency_p99_s": percentile([r["latency"] for r in ok], 0.99),
            "mean_tokens": statistics.fmean([r["tokens"] for r in ok]) if ok else 0.0}


def closed_loop(target: str, clients: int, seconds: float, max_new: int, calls_per_window: float = 3.0,
                prompts: str = "shared") -> dict:
    """`clients` callers, each sending its next call as soon as the last one ends. Ramp-up (until
    every client has finished its first call) is not measured; the window after it lasts `seconds`
    or `calls_per_window` times the ramp-up, whichever is longer. `prompts`: see client_prompt."""
    async def run():
        results: list[dict] = []
        window: dict[str, float] = {}
        async with grpc.aio.insecure_channel(target) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            t0, firsts = time.perf_counter(), [0]

            async def client(c: int):
                i = 0
                while "hi" not in window or time.perf_counter() < window["hi"]:
                    await _call(stub, request(c * 100_000 + i, max_new, client_prompt(prompts, c, i, clients)),
                                results)
                    i += 1
                    firsts[0] += i == 1
                    if i == 1 and firsts[0] == clients:
                        window["lo"] = lo = time.perf_counter()
                        window["hi"] = lo + max(seconds, calls_per_window * (lo - t0))
            await asyncio.gather(*(client(c) for c in range(clients)))
            every = [r["ttft"] for r in results if r["error"] is None]  # the calls the server's histograms count
            return {"ramp_s": window["lo"] - t0, **summarise(results, (window["lo"], window["hi"])),
                    "ttft_mean_all_s": statistics.fmean(every) if every else float("nan")}
    return {"clients": clients, "max_new_tokens": max_new, "prompts": prompts, **asyncio.run(run())}


def open_loop(target: str, rate: float, seconds: float, lo: int = 16, hi: int = 256, seed: int = 0) -> dict:
    """Poisson arrivals at `rate` calls/s for `seconds`, max_new_tokens uniform in [lo, hi]."""
    rng = random.Random(seed)

    async def run():
        results: list[dict] = []
        async with grpc.aio.insecure_channel(target) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            tasks, started, at, i = [], time.perf_counter(), 0.0, 0
            while True:
                at += rng.expovariate(rate)
                if at > seconds:
                    break
                await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
                tasks.append(asyncio.create_task(_call(stub, request(i, rng.randint(lo, hi)), results)))
                i += 1
            await asyncio.gather(*tasks)
            if not results:  # no arrival fell in the window
                return {"requests": 0, "errors": 0, "tokens_per_s": 0.0, "ttft_p50_s": float("nan"),
                        "ttft_p99_s": float("nan"), "latency_p50_s": float("nan"), "latency_p99_s": float("nan")}
            return summarise(results)
    return {"rate_per_s": rate, **asyncio.run(run())}


def in_client_process(fn: str, *args) -> dict:
    """Runs load generator `fn` (closed_loop or open_loop) in a child process: real clients do not
    share the server's interpreter, and in-process clients took the GIL from its decode thread."""
    code = (f"import json, sys; from benchmarks.serving_load import {fn}; "
            f"print(json.dumps({fn}(*json.loads(sys.argv[1]))))")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env,
                         cwd=root, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load generator {fn} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _prompt_ids(tokenizer) -> list[list[int]]:
    from training.text_format import render_prompt
    return [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in PROMPTS]


def prompt_batch(lm, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T0) left-padded ids of PROMPTS in turn and (B, T0) their mask (1 = real token), on the model's device."""
    from training.sequences import left_pad
    prompts = _prompt_ids(lm.tokenizer)
    ids, mask = left_pad([prompts[i % len(prompts)] for i in range(batch)], lm.pad_id)
    return ids.to(lm.device), mask.to(lm.device)


@torch.inference_mode()
def naive_generate(model_dir: Path, requests: int, max_new: int, device: str = "cpu", packed: bool = False) -> dict:
    """Hugging Face generate, one request at a time (what a first server would do), on `device` in the
    dtype the server uses there (bf16 on CUDA); `packed`: with the server's packed CPU weights
    (service/packed_linear.py), to tell what they do for one row from what they do for a batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.devices import resolve_device, serving_dtype, synchronize
    dev = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=serving_dtype(dev)).to(dev).eval()
    if packed and dev.type == "cpu":
        from service.packed_linear import pack_linear_layers
        pack_linear_layers(model)
    prompts = _prompt_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.generate(torch.tensor([prompts[0]], device=dev), max_new_tokens=2, pad_token_id=pad)  # warm-up
    synchronize(dev)
    tokens, latencies, started = 0, [], time.perf_counter()
    for i in range(requests):
        ids = torch.tensor([prompts[i % len(prompts)]], device=dev)
        torch.manual_seed(i)
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             max_new_tokens=max_new, pad_token_id=pad)
        synchronize(dev)
        latencies.append(time.perf_counter() - t0)
        tokens += out.shape[1] - ids.shape[1]
    wall = time.perf_counter() - started
    return {"requests": requests, "tokens_per_s": tokens / wall, "latency_p50_s": percentile(latencies, 0.5),
            "latency_p99_s": percentile(latencies, 0.99), "mean_tokens": tokens / requests}


@torch.inference_mode()
def bare_loop(model_dir: Path, batch: int, max_new: int, rounds: int, device: str = "cpu",
              grow: int | None = None, packed_weights: bool = True) -> dict:
    """Roofline: prefill `batch` prompts, then `max_new` batched decoding steps (greedy), no server; on
    `device` as the server loads it (bf16 on CUDA; packed CPU weights unless `packed_weights` is False), with
    the server's KV cache (`grow` spare columns, default the server's; 0: the model's own cache)."""
    from service.decoder import GROW_COLUMNS
    from service.model_pool import load_model_dir
    from training.devices import resolve_device, synchronize
    from training.kv_cache import make_cache
    from training.sequences import position_ids
    dev = resolve_device(device)
    lm = load_model_dir(model_dir, "bare", dev, packed_weights)
    ids, mask = prompt_batch(lm, batch)
    positions = position_ids(mask)  # (B, T0) pads at 0
    lm.model(input_ids=ids, attention_mask=mask, position_ids=positions)  # warm-up (CUDA kernels, allocator)
    synchronize(dev)
    prefill_s, step_s, started = [], [], time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{lm.cache_arg: make_cache(lm.model, GROW_COLUMNS if grow is None else grow)})
        synchronize(dev)
        prefill_s.append(time.perf_counter() - t0)
        cache, m, pos = getattr(out, lm.cache_arg), mask, positions[:, -1:]
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        for _ in range(max_new - 1):
            t0 = time.perf_counter()
            m, pos = torch.cat([m, m.new_ones((batch, 1))], 1), pos + 1
            out = lm.model(input_ids=nxt, attention_mask=m, position_ids=pos, use_cache=True,
                           **{lm.cache_arg: cache})
            cache, nxt = getattr(out, lm.cache_arg), out.logits[:, -1].argmax(-1, keepdim=True)
            synchronize(dev)
            step_s.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    one = lm.model(input_ids=ids[:1], attention_mask=mask[:1], position_ids=positions[:1])  # warm single prefill
    synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(3):
        one = lm.model(input_ids=ids[:1], attention_mask=mask[:1], position_ids=positions[:1])
    synchronize(dev)
    del one
    return {"batch": batch, "max_new_tokens": max_new, "tokens_per_s": batch * max_new * rounds / wall,
            "prefill_batch_s": statistics.median(prefill_s), "prefill_one_s": (time.perf_counter() - t0) / 3,
            "decode_step_s": statistics.median(step_s)}


def random_gpt2_dir(builtin: Path, out: Path, n_layer: int = 12, n_embd: int = 768, n_head: int = 12) -> Path:
    """A randomly initialised GPT-2 of the given shape with the built-in model's tokenizer (cached)."""
    if (out / "config.json").is_file():
        return out
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    tokenizer = AutoTokenizer.from_pretrained(builtin)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
