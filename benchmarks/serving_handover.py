"""A/B of the engine's hand-over to the event loop: once per decoding step (now) vs once per row and
token (before), in one server process, alternating, so that the machine's load hits both alike.

    .venv/bin/python -m benchmarks.serving_handover [--model-dir DIR] [--pairs 3] [--seconds 8]

Default model: the built-in SFT model, where Python around each step bounds throughput. The load
generator (16 closed-loop streaming clients, 32 new tokens) runs in a child process. Writes
benchmarks/results/serving/handover.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.learning.stack import builtin_sft_dir, register_sft
from benchmarks.serving_load import in_client_process
from rlhf_serve.local import LocalServer, delete_prefix, unique_prefix
from rlhf_core.settings import Settings
from service.engine import _deliver


class PerRowHandOver(list):
    """The engine's outbox as it behaved before: every hand-over is its own cross-thread call."""

    def __init__(self, loop):
        super().__init__()
        self.loop = loop

    def append(self, item) -> None:
        self.loop.call_soon_threadsafe(_deliver, [item])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serving/handover.json"))
    args = p.parse_args()
    model_dir = args.model_dir or builtin_sft_dir(0)
    runs: dict[str, list[float]] = {"per_row": [], "per_step": []}
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(key_prefix=unique_prefix("handover"), registry=Path(tmp) / "registry", port=0, metrics_port=0,
                     host="127.0.0.1", max_batch_size=32, max_queue=4096)
        register_sft(s, model_dir, str(model_dir))
        srv = LocalServer(s).start()
        engine = srv.server.engine
        try:
            for _ in range(args.pairs):
                for mode in ("per_row", "per_step"):
                    engine._outbox = PerRowHandOver(srv.loop) if mode == "per_row" else []
                    r = in_client_process("closed_loop", srv.target, 16, args.seconds, 32, 2.0)
                    runs[mode].append(r["tokens_per_s"])
                    print(f"{mode:8s} {r['tokens_per_s']:7.1f} tok/s, TTFT p99 {r['ttft_p99_s'] * 1e3:.0f} ms, "
                          f"{r['errors']} errors", flush=True)
        finally:
            srv.stop()
            delete_prefix(s.redis_url, s.key_prefix)
    pairs = [b / a for a, b in zip(runs["per_row"], runs["per_step"])]
    out = {"model_dir": str(model_dir), "clients": 16, "tokens_per_s": runs, "per_step_over_per_row": pairs,
           "median_ratio": statistics.median(pairs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"per-step / per-row hand-over: median {out['median_ratio']:.2f}x over {len(pairs)} pairs -> {args.out}")


if __name__ == "__main__":
    main()
