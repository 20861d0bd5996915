"""Serving benchmark: continuous batching against the naive baseline and the bare forward loop.

    .venv/bin/python -m benchmarks.serving [--quick] [--models builtin,gpt2-small] [--out benchmarks/results/serving]
        [--device auto|cpu|cuda] [--cudnn-attention] [--closed-s S] [--open-s S]

For each model, in one run: the naive baseline (Hugging Face `generate`, one request at a time);
a real server (loopback gRPC, real Redis; the load generator in a child process) under closed-loop
load with 1, 4, 16 and 32 streaming clients (32 new tokens each) and open-loop Poisson arrivals at
several rates with max_new_tokens uniform in 16..256; and the bare batched forward loop at the same
batch size (no server) as the roofline. Every client's k-th call sends PROMPTS[k % 4], so clients in
lockstep send one prompt together, and the server shares that prefill (RLHF_SHARE_PREFILL): the 16-client load runs again
with 16 distinct prompts and with sharing off, to show what the sharing does and what a load with no
prompt in common gets. Reports throughput, TTFT p50/p99, latency p50/p99 and the targets of issue 8,
writes result.json and a throughput-vs-latency plot. Models: the built-in SFT model (cached under
benchmarks/.cache) and a randomly initialised GPT-2-small shape (12 x 768, ~86M parameters) with
the built-in tokenizer. Absolute figures depend on the machine's load; ratios within a run count.
`--quick` runs a short version (the test suite's smoke test uses it on the tiny model).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.learning.stack import CACHE, builtin_sft_dir, register_sft
from benchmarks.serving_load import bare_loop, in_client_process, naive_generate, random_gpt2_dir
from rlhf_serve.local import LocalServer, delete_prefix, metric_value, unique_prefix
from rlhf_core.settings import Settings
from training.devices import allow_cudnn_attention, resolve_device, serving_dtype

MAX_NEW = 32


def plan(quick: bool, device: str = "cpu") -> dict:
    """Phase lengths; a closed-loop window is at least `calls_per_window` call durations long. Every phase runs
    the model on `device`."""
    if quick:
        return {"clients": [1, 16], "closed_s": 3.0, "calls_per_window": 1.5, "open_fractions": [0.5], "open_s": 5.0,
                "naive_requests": 3, "bare_rounds": 1, "device": device}
    return {"clients": [1, 4, 16, 32], "closed_s": 15.0, "calls_per_window": 3.0, "open_fractions": [0.3, 0.6, 0.9],
            "open_s": 30.0, "naive_requests": 6, "bare_rounds": 2, "device": device}


SERVER_MEANS = {"mean_batch": "rlhf_batch_size", "server_ttft_mean_s": "rlhf_time_to_first_token_seconds",
                "queue_time_mean_s": "rlhf_queue_time_seconds"}


def server_sums(srv) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's histograms behind each of SERVER_MEANS, and its prompt cache's (hit tokens,
    query tokens)."""
    text = srv.metrics_text()
    sums = {k: (metric_value(text, f"{m}_sum"), metric_value(text, f"{m}_count")) for k, m in SERVER_MEANS.items()}
    sums["prompt_cache_hit_rate"] = (metric_value(text, "rlhf_prompt_cache_hit_tokens_total"),
                                     metric_value(text, "rlhf_prompt_cache_query_tokens_total"))
    return sums


def server_means(before: dict, after: dict) -> dict[str, float]:
    """Mean batch size, engine-side TTFT (enqueued to first token) and queue time (enqueued to admitted)
    over a phase; with the clients' mean TTFT they split a call's TTFT into queue, prefill and transport. And the
    share of the prefills' prompt tokens (distinct prompts) that the prompt cache served."""
    return {k: (after[k][0] - before[k][0]) / max(1.0, after[k][1] - before[k][1]) for k in before}


def ttft_split(r: dict) -> str:
    """The clients' mean TTFT over every call of the phase, ramp-up included (the calls the server's histograms
    count; the window's own mean is `ttft_mean_s`), split into the engine's queue wait, its prefill and the rest."""
    queue, server, ttft = r["queue_time_mean_s"], r["server_ttft_mean_s"], r["ttft_mean_all_s"]
    return (f"TTFT mean {ttft * 1e3:.0f} ms = queue {queue * 1e3:.0f} + prefill {(server - queue) * 1e3:.0f}"
            f" + gRPC/transport {(ttft - server) * 1e3:.0f}")


def serve_phases(model_dir: Path, p: dict, log, prompts: str = "shared", **overrides) -> dict:
    """The closed-loop phases (and, for the server as configured with shared prompts, the open-loop ones) on a
    fresh server with these settings `overrides`."""
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                     key_prefix=unique_prefix("bench"), registry=Path(tmp) / "registry", port=0, metrics_port=0,
                     host="127.0.0.1", device=p["device"], cudnn_attention=p["cudnn_attention"],
                     max_batch_size=32, max_queue=4096, **overrides)
        register_sft(s, model_dir, str(model_dir))
        srv = LocalServer(s).start()
        try:
            closed = []
            for clients in p["clients"]:
                before = server_sums(srv)
                r = in_client_process("closed_loop", srv.target, clients, p["closed_s"], MAX_NEW, p["calls_per_window"],
                                      prompts)
                r.update(server_means(before, server_sums(srv)))
                log(f"  closed {clients:3d} clients: {fmt(r)} | mean batch {r['mean_batch']:.1f} | {ttft_split(r)}"
                    f" | prompt cache hits {r['prompt_cache_hit_rate'] * 100:.0f}%")
                closed.append(r)
            ref = next(c for c in closed if c["clients"] == max(c2["clients"] for c2 in closed if c2["clients"] <= 16))
            # calls/s the server sustains at max_new_tokens 16..256 (mean 136), or at the model's own
            # length when it ends before max_new_tokens (EOS) in the closed loop
            per_call = ref["mean_tokens"] if ref["mean_tokens"] < 0.9 * MAX_NEW else 136.0
            capacity = ref["tokens_per_s"] / max(1.0, per_call)
            opened = []
            for frac in p["open_fractions"] if not overrides and prompts == "shared" else []:
                r = in_client_process("open_loop", srv.target, frac * capacity, max(p["open_s"], 3.0 / (frac * capacity)))
                r["load_fraction"] = frac
                log(f"  open {r['rate_per_s']:5.2f}/s: {fmt(r)}")
                opened.append(r)
        finally:
            srv.stop()
            delete_prefix(s.redis_url, s.key_prefix)
    return {"closed_loop": closed, "open_loop": opened}


# 16-client phases on a server set up otherwise: result key -> (what differs, the clients' prompts, settings)
ALTERNATIVES = {
    "closed_16_prefill_budget_1": ("with a prefill budget of one step (RLHF_PREFILL_STEP_RATIO=1)", "shared",
                                   {"prefill_step_ratio": 1.0}),
    "closed_16_distinct_prompts": ("with every client's prompt distinct from the others' (no prompt to share) and the"
                                   " prompt cache off (nothing kept from earlier calls)", "distinct",
                                   {"prompt_cache_mb": 0.0}),
    "closed_16_no_prompt_cache": ("without the prompt cache (RLHF_PROMPT_CACHE_MB=0: each call's prompt runs, shared"
                                  " only with the calls joining in its step)", "shared", {"prompt_cache_mb": 0.0}),
    "closed_16_unshared_prefill": ("without shared prefills (RLHF_SHARE_PREFILL=false; the same prompts)", "shared",
                                   {"share_prefill": False}),
    "closed_16_plain_kv_cache": ("with the model's own KV cache (RLHF_KV_GROW_COLUMNS=0: torch.cat every step)",
                                 "shared", {"kv_grow_columns": 0}),
    "closed_16_dense_weights": ("with dense CPU weights (RLHF_CPU_PACKED_WEIGHTS=false: MKL's GEMM every step)",
                                "shared", {"cpu_packed_weights": False}),
}
CPU_ONLY = {"closed_16_dense_weights"}  # the setting does nothing on CUDA


def in_thread(fn, *args):
    """Runs `fn` on a fresh thread, as the engine runs the model (on a loaded 2-core machine torch's
    main-thread OpenMP team was ~100x slower than a worker thread's: compare like with like)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def fmt(r: dict) -> str:
    return (f"{r['tokens_per_s']:7.1f} tok/s, TTFT p50 {r['ttft_p50_s'] * 1e3:6.0f} ms p99 {r['ttft_p99_s'] * 1e3:6.0f} ms,"
            f" latency p50 {r['latency_p50_s'] * 1e3:6.0f} ms p99 {r['latency_p99_s'] * 1e3:6.0f} ms,"
            f" {r['requests']} calls, {r['errors']} errors")


def bench_model(name: str, model_dir: Path, p: dict, log=print) -> dict:
    log(f"[{name}] {model_dir}")
    cpu = resolve_device(p["device"]).type == "cpu"
    naive = in_thread(naive_generate, model_dir, p["naive_requests"], MAX_NEW, p["device"])
    log(f"  naive HF generate: {naive['tokens_per_s']:.1f} tok/s, latency p50 {naive['latency_p50_s'] * 1e3:.0f} ms")
    # next to it: the same baseline with packed weights (on the CPU; the comparison is in packed_vs_dense)
    naive_packed = in_thread(naive_generate, model_dir, p["naive_requests"], MAX_NEW, p["device"], True) if cpu else None
    served = serve_phases(model_dir, p, log)
    at16 = next((c for c in served["closed_loop"] if c["clients"] == 16), served["closed_loop"][-1])
    only16 = {**p, "clients": [at16["clients"]]}
    alt = {}
    for key, (what, prompts, overrides) in ALTERNATIVES.items():
        if key in CPU_ONLY and not cpu:
            continue
        log(f"  the same load {what}:")
        alt[key] = serve_phases(model_dir, only16, log, prompts=prompts, **overrides)["closed_loop"][0]
    distinct, unshared = alt["closed_16_distinct_prompts"], alt["closed_16_unshared_prefill"]
    batch = max(1, round(at16["mean_batch"]))
    bare = in_thread(bare_loop, model_dir, batch, MAX_NEW, p["bare_rounds"], p["device"])
    plain = in_thread(bare_loop, model_dir, batch, MAX_NEW, p["bare_rounds"], p["device"], 0)
    log(f"  bare batched loop (batch {batch}): {bare['tokens_per_s']:.1f} tok/s, step {bare['decode_step_s'] * 1e3:.1f}"
        f" ms, prefill(1) {bare['prefill_one_s'] * 1e3:.1f} ms; with the model's own KV cache:"
        f" {plain['tokens_per_s']:.1f} tok/s, step {plain['decode_step_s'] * 1e3:.1f} ms")
    ttft_bound = bare["prefill_one_s"] + 2 * bare["decode_step_s"]
    targets = {
        "speedup_vs_naive_at_16": at16["tokens_per_s"] / naive["tokens_per_s"],
        "ttft_p99_at_16_s": at16["ttft_p99_s"],
        "ttft_bound_prefill_plus_2_steps_s": ttft_bound,
        "ttft_p99_over_bound": at16["ttft_p99_s"] / ttft_bound,
        # closed-loop calls of equal length end together and come back together: their prompts are one
        # prefill of the whole batch, which the bound above (one prompt's prefill) leaves out
        "ttft_bound_batch_prefill_plus_2_steps_s": bare["prefill_batch_s"] + 2 * bare["decode_step_s"],
        "engine_overhead_vs_bare": 1.0 - at16["tokens_per_s"] / bare["tokens_per_s"],
        # clients in lockstep send one prompt together (the k-th call of each: PROMPTS[k % 4]), and its prefill is
        # shared (RLHF_SHARE_PREFILL); the same load with 16 distinct prompts, and with sharing off, says what
        # the sharing does
        "speedup_vs_naive_at_16_distinct_prompts": distinct["tokens_per_s"] / naive["tokens_per_s"],
        "ttft_p99_at_16_distinct_prompts_s": distinct["ttft_p99_s"],
        "ttft_p99_at_16_unshared_prefill_s": unshared["ttft_p99_s"],
        # the growing KV cache (RLHF_KV_GROW_COLUMNS) against the model's own (torch.cat every step)
        "speedup_vs_plain_kv_cache_at_16": at16["tokens_per_s"] / alt["closed_16_plain_kv_cache"]["tokens_per_s"],
        # the prompt cache (RLHF_PROMPT_CACHE_MB): the benchmark's 4 prompts come back call after call
        "prompt_cache_hit_rate_at_16": at16["prompt_cache_hit_rate"],
        "speedup_vs_no_prompt_cache_at_16": at16["tokens_per_s"] / alt["closed_16_no_prompt_cache"]["tokens_per_s"],
        "ttft_p99_at_16_no_prompt_cache_s": alt["closed_16_no_prompt_cache"]["ttft_p99_s"],
        "ttft_p99_no_prompt_cache_over_bound": alt["closed_16_no_prompt_cache"]["ttft_p99_s"] / ttft_bound,
        "bare_step_plain_kv_cache_over_growing": plain["decode_step_s"] / bare["decode_step_s"],
        "errors": sum(r["errors"] for r in served["closed_loop"] + served["open_loop"] + list(alt.values())),
    }
    packed = packed_vs_dense(model_dir, p, naive, naive_packed, at16, alt, bare, batch, log) if cpu else {}
    targets.update(packed.pop("targets", {}))
    batch_bound = targets["ttft_bound_batch_prefill_plus_2_steps_s"]
    log(f"  => {targets['speedup_vs_naive_at_16']:.2f}x naive at 16 clients; TTFT p99 {at16['ttft_p99_s'] * 1e3:.0f} ms"
        f" vs bound {ttft_bound * 1e3:.0f} ms (with the batch's prefill {batch_bound * 1e3:.0f} ms);"
        f" overhead vs bare {targets['engine_overhead_vs_bare'] * 100:.0f}%; {targets['errors']} errors;"
        f" distinct prompts: {targets['speedup_vs_naive_at_16_distinct_prompts']:.2f}x naive, TTFT p99"
        f" {distinct['ttft_p99_s'] * 1e3:.0f} ms; unshared prefill: TTFT p99 {unshared['ttft_p99_s'] * 1e3:.0f} ms;"
        f" growing KV cache: {targets['speedup_vs_plain_kv_cache_at_16']:.2f}x the model's own at 16 clients,"
        f" bare step {targets['bare_step_plain_kv_cache_over_growing']:.2f}x faster; prompt cache: hits"
        f" {targets['prompt_cache_hit_rate_at_16'] * 100:.0f}% at 16 clients,"
        f" {targets['speedup_vs_no_prompt_cache_at_16']:.2f}x the load without it, whose TTFT p99 is"
        f" {targets['ttft_p99_at_16_no_prompt_cache_s'] * 1e3:.0f} ms")
    return {"model_dir": str(model_dir), "naive": naive, **served, **alt, "bare_loop": bare,
            "bare_loop_plain_kv_cache": plain, **packed, "targets": targets}


def packed_vs_dense(model_dir: Path, p: dict, naive: dict, naive_packed: dict, at16: dict, alt: dict, bare: dict,
                    batch: int, log) -> dict:
    """On the CPU: the packed weights (RLHF_CPU_PACKED_WEIGHTS) against MKL's dense GEMM, in the same run: the
    16-client load (its dense phase is one of ALTERNATIVES), the bare loop's step (a dense loop run here), and the
    naive baseline (one row: what the packing does without a batch)."""
    dense = in_thread(bare_loop, model_dir, batch, MAX_NEW, p["bare_rounds"], p["device"], None, False)
    targets = {
        "speedup_vs_dense_weights_at_16": at16["tokens_per_s"] / alt["closed_16_dense_weights"]["tokens_per_s"],
        "bare_step_dense_over_packed": dense["decode_step_s"] / bare["decode_step_s"],
        "naive_packed_over_naive": naive_packed["tokens_per_s"] / naive["tokens_per_s"],
        "speedup_vs_naive_packed_at_16": at16["tokens_per_s"] / naive_packed["tokens_per_s"],
    }
    log(f"  packed weights: {targets['speedup_vs_dense_weights_at_16']:.2f}x dense at 16 clients, bare step"
        f" {targets['bare_step_dense_over_packed']:.2f}x faster (dense {dense['decode_step_s'] * 1e3:.1f} ms),"
        f" naive {naive_packed['tokens_per_s']:.1f} tok/s with them ({targets['naive_packed_over_naive']:.2f}x);"
        f" {targets['speedup_vs_naive_packed_at_16']:.2f}x the naive baseline with packed weights")
    return {"naive_packed_weights": naive_packed, "bare_loop_dense_weights": dense, "targets": targets}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        closed, opened = r["closed_loop"], r["open_loop"]
        ax.plot([c["tokens_per_s"] for c in closed], [c["latency_p50_s"] for c in closed], "o-", label="closed loop p50")
        ax.plot([c["tokens_per_s"] for c in closed], [c["latency_p99_s"] for c in closed], "o--", label="closed loop p99")
        for c in closed:
            ax.annotate(f"{c['clients']}", (c["tokens_per_s"], c["latency_p50_s"]))
        ax.plot([o["tokens_per_s"] for o in opened], [o["latency_p50_s"] for o in opened], "s-", label="open loop p50")
        for key, marker, label in (("closed_16_distinct_prompts", "D", "16 clients, distinct prompts (p50)"),
                                   ("closed_16_unshared_prefill", "x", "16 clients, prefill not shared (p50)")):
            if key in r:
                ax.plot([r[key]["tokens_per_s"]], [r[key]["latency_p50_s"]], marker, label=label)
        ax.plot([r["naive"]["tokens_per_s"]], [r["naive"]["latency_p50_s"]], "k^", label="naive HF generate")
        ax.axvline(r["bare_loop"]["tokens_per_s"], color="grey", linestyle=":", label="bare batched loop")
        ax.set(title=name, xlabel="throughput (generated tokens/s)", ylabel="latency per call (s)", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def model_dirs(names: list[str], tiny: Path | None) -> dict[str, Path]:
    if tiny is not None:
        return {"tiny": tiny}
    builtin = builtin_sft_dir(0)
    known = {"builtin": lambda: builtin, "gpt2-small": lambda: random_gpt2_dir(builtin, CACHE / "gpt2-small-random")}
    return {n: known[n]() for n in names}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (seconds per phase, fewer phases)")
    parser.add_argument("--models", default="builtin,gpt2-small")
    parser.add_argument("--model-dir", type=Path, help="benchmark this Hugging Face directory only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving"))
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, bf16), cpu, cuda, cuda:N: the"
                        " server, the naive baseline and the bare loop all run there")
    parser.add_argument("--cudnn-attention", action="store_true", help="let attention use cuDNN on CUDA"
                        " (RLHF_CUDNN_ATTENTION; off as the server's default): every phase, the baselines too")
    parser.add_argument("--closed-s", type=float, help="seconds per closed-loop phase (default: the plan's)")
    parser.add_argument("--open-s", type=float, help="seconds per open-loop phase (default: the plan's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every phase (default 1: on a small shared machine more only contend)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    lengths = {k: v for k, v in (("closed_s", args.closed_s), ("open_s", args.open_s)) if v is not None}
    p = {**plan(args.quick, str(device)), **lengths, "cudnn_attention": args.cudnn_attention}
    allow_cudnn_attention(args.cudnn_attention)  # the naive baseline and the bare loop run as the server does
    started = time.time()
    results = {name: bench_model(name, d, p) for name, d in model_dirs(args.models.split(","), args.model_dir).items()}
    out = {"device": str(device), "device_name": device_name(device), "dtype": str(serving_dtype(device)),
           "cpu_count": os.cpu_count(), "torch_threads": args.threads, "load_avg": os.getloadavg(), "quick": args.quick,
           "plan": p, "seconds": time.time() - started, "models": results}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "result-quick" if args.quick else "result"
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1))
    plot(results, args.out / f"{stem}.png")
    return out


if __name__ == "__main__":
    main()
