"""Where a call's time to first token goes under closed-loop load, and A/B of what might cut it.

    .venv/bin/python -m benchmarks.serving_ttft [--model-dir DIR] [--pairs 3] [--seconds 12] [--variants ...]

One server process, 16 closed-loop streaming clients (32 new tokens each, in a child process), the
variants alternating so that the machine's load hits each alike. Each phase splits the clients' mean
TTFT into the engine's queue wait (enqueued to admitted), prefill (admitted to first token) and the
rest (gRPC, the event loop, the client): see `benchmarks.serving.ttft_split`. Default model: the
randomly initialised GPT-2-small shape (12 x 768) of the serving benchmark. Variants:

- `base`: the engine with its defaults (the server is started with them);
- `switch1ms`: the server's interpreter switches threads every 1 ms instead of Python's 5 ms, so the
  event loop waits less for the GIL while the decode thread runs Python between kernels;
- `prefill_first`: the engine's `prefill_first` (requests that arrive during a prefill are prefilled
  before the step);
- `flush_per_iteration`: the hand-over of an earlier engine (chunks and answers once per iteration,
  not after each prefill and each version's step): A/B of that change.

Writes benchmarks/results/serving/ttft.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.learning.stack import CACHE, builtin_sft_dir, register_sft
from benchmarks.serving import server_means, server_sums, ttft_split
from benchmarks.serving_load import in_client_process, random_gpt2_dir
from rlhf_core.settings import Settings
from rlhf_serve.local import LocalServer, delete_prefix, unique_prefix


def _switch_interval(seconds: float):
    def apply(_srv) -> float:
        before = sys.getswitchinterval()
        sys.setswitchinterval(seconds)
        return before
    return apply, sys.setswitchinterval


def _engine_flag(name: str, value):
    def apply(srv) -> tuple:
        engine = srv.server.engine
        before = getattr(engine, name)
        setattr(engine, name, value)
        return engine, before
    return apply, lambda old: setattr(old[0], name, old[1])


def _flush_per_iteration(srv):
    """The engine as it was before its hand-overs after each prefill and each version's step: the decode
    thread hands chunks and answers to the event loop once, at the end of each iteration."""
    engine = srv.server.engine
    real_flush, real_iteration = engine._flush, engine._iteration

    def iteration() -> None:
        try:
            real_iteration()
        finally:
            real_flush()
    engine._flush, engine._iteration = (lambda: None), iteration  # instance attributes shadow the methods
    return engine


def _restore_flush(engine) -> None:
    del engine._flush, engine._iteration


VARIANTS = {"base": (lambda _srv: None, lambda _old: None), "switch1ms": _switch_interval(0.001),
            "prefill_first": _engine_flag("prefill_first", True),
            "flush_per_iteration": (_flush_per_iteration, _restore_flush)}


def phase(srv, clients: int, seconds: float) -> dict:
    before = server_sums(srv)
    r = in_client_process("closed_loop", srv.target, clients, seconds, 32, 2.0)
    return {**r, **server_means(before, server_sums(srv))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serving/ttft.json"))
    args = p.parse_args(argv)
    model_dir = args.model_dir or random_gpt2_dir(builtin_sft_dir(0), CACHE / "gpt2-small-random")
    names = args.variants.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), key_prefix=unique_prefix("ttft"), registry=Path(tmp) / "registry", port=0, metrics_port=0,
                     host="127.0.0.1", max_batch_size=32, max_queue=4096)
        register_sft(s, model_dir, str(model_dir))
        srv = LocalServer(s).start()
        try:
            for _ in range(args.pairs):
                for name in names:
                    apply, undo = VARIANTS[name]
                    old = apply(srv)
                    try:
                        r = phase(srv, args.clients, args.seconds)
                    finally:
                        undo(old)
                    runs[name].append(r)
                    print(f"{name:10s} {r['tokens_per_s']:6.1f} tok/s, TTFT p50 {r['ttft_p50_s'] * 1e3:4.0f} ms p99 "
                          f"{r['ttft_p99_s'] * 1e3:4.0f} ms, mean batch {r['mean_batch']:.1f} | {ttft_split(r)} | "
                          f"{r['errors']} errors", flush=True)
        finally:
            srv.stop()
            delete_prefix(s.redis_url, s.key_prefix)
    keys = ("tokens_per_s", "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "queue_time_mean_s", "server_ttft_mean_s",
            "mean_batch")
    out = {"model_dir": str(model_dir), "clients": args.clients, "seconds": args.seconds, "runs": runs,
           "median": {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in runs.items() if rs}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for n, m in out["median"].items():
        print(f"median {n:10s} {m['tokens_per_s']:6.1f} tok/s, TTFT p99 {m['ttft_p99_s'] * 1e3:.0f} ms, mean "
              f"{m['ttft_mean_s'] * 1e3:.0f} ms (queue {m['queue_time_mean_s'] * 1e3:.0f}, engine TTFT "
              f"{m['server_ttft_mean_s'] * 1e3:.0f})")
    print(f"-> {args.out}")
    return out


if __name__ == "__main__":
    main()
