"""Serving latency and batching benchmark: one Generate call, and 16 concurrent ones.

    .venv/bin/python -m benchmarks.serving [--model-dir DIR] [--out benchmarks/results/serving]

Runs a real server (loopback, real Redis) on the built-in model (built into benchmarks/.cache if
missing) twice: with batching (max_batch_size 16) and with batching off (max_batch_size 1) as
the baseline, and reports the ratio, since absolute figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rlhf.v1 import policy_pb2
from benchmarks.learning.stack import builtin_sft_dir, register_sft
from rlhf_serve.local import LocalServer, delete_prefix, unique_prefix
from rlhf_serve.settings import Settings

PROMPT = "My order hasn't arrived. What should I do?"


def request(i: int, max_new: int) -> policy_pb2.GenerateRequest:
    # min_tokens is not in the API, so a seed per call keeps runs comparable between configurations
    return policy_pb2.GenerateRequest(prompt=PROMPT, sampling=policy_pb2.SamplingParams(max_new_tokens=max_new, seed=i))


def timed(stub, req) -> tuple[float, int]:
    started = time.perf_counter()
    resp = stub.Generate(req, timeout=120)
    return time.perf_counter() - started, resp.candidates[0].num_tokens


def measure(model_dir: Path, max_batch: int, concurrency: int, repeats: int, max_new: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), key_prefix=unique_prefix("bench"),
                     registry=Path(tmp) / "registry", port=0, metrics_port=-1, host="127.0.0.1", device="auto",
                     max_batch_size=max_batch, batch_wait_ms=5.0)
        register_sft(s, model_dir, str(model_dir))
        server = LocalServer(s).start()
        try:
            timed(server.policy, request(0, max_new))  # warm-up
            single = [timed(server.policy, request(i, max_new))[0] for i in range(repeats)]
            bursts, latencies, tokens = [], [], 0
            for r in range(repeats):
                started = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    results = list(pool.map(lambda i: timed(server.policy, request(i, max_new)),
                                            range(r * concurrency, (r + 1) * concurrency)))
                bursts.append(time.perf_counter() - started)
                latencies += [lat for lat, _ in results]
                tokens += sum(n for _, n in results)
        finally:
            server.stop()
            delete_prefix(s.redis_url, s.key_prefix)
    return {
        "max_batch_size": max_batch,
        "single_p50_s": statistics.median(single),
        "concurrent": concurrency,
        "burst_wall_p50_s": statistics.median(bursts),
        "concurrent_latency_p50_s": statistics.median(latencies),
        "concurrent_latency_p95_s": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
        "tokens_per_s": tokens / sum(bursts),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving"))
    args = parser.parse_args(argv)
    model_dir = args.model_dir or builtin_sft_dir(0)
    batched = measure(model_dir, 16, args.concurrency, args.repeats, args.max_new_tokens)
    baseline = measure(model_dir, 1, args.concurrency, args.repeats, args.max_new_tokens)
    result = {"model_dir": str(model_dir), "cpu_count": os.cpu_count(), "batched": batched,
              "baseline_unbatched": baseline,
              "throughput_ratio": batched["tokens_per_s"] / baseline["tokens_per_s"],
              "burst_wall_ratio": baseline["burst_wall_p50_s"] / batched["burst_wall_p50_s"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    for name, r in (("batched", batched), ("unbatched", baseline)):
        print(f"{name:10} single p50 {r['single_p50_s'] * 1000:7.1f} ms | {args.concurrency} concurrent: burst "
              f"{r['burst_wall_p50_s'] * 1000:7.1f} ms, per-call p50 {r['concurrent_latency_p50_s'] * 1000:7.1f} ms "
              f"p95 {r['concurrent_latency_p95_s'] * 1000:7.1f} ms, {r['tokens_per_s']:7.1f} tok/s")
    print(f"batching speeds a {args.concurrency}-call burst up {result['burst_wall_ratio']:.2f}x "
          f"(throughput x{result['throughput_ratio']:.2f})")
    return result


if __name__ == "__main__":
    main()
