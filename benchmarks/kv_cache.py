"""The growing KV cache (training/kv_cache.py) against transformers' own, without a server, in one run.

    .venv/bin/python -m benchmarks.kv_cache [--model-dir DIR] [--batches 1,4,16,32] [--tokens 64] [--pairs 3]
        [--rollout-batch 32] [--device cpu|cuda] [--out benchmarks/results/serving/kv_cache.json]

Two loops on the same model, each timed with the server's cache (`RLHF_KV_GROW_COLUMNS` spare columns) and
with the model's own (`torch.cat` of the whole cache every step), the two alternating `--pairs` times so the
machine's load hits both alike; medians reported:
- the decoding step of a batch (the serving benchmark's bare loop: greedy, `--tokens` steps after a prefill of
  its prompts), per batch size: what the server's decode thread runs;
- PPO's rollout sampling (`training.rollout.sample_tokens`, `--tokens` new tokens at temperature 1, batch
  `--rollout-batch`): what a training round runs, with room for the whole response.
The rollouts are checked to sample the same tokens with either cache. Default model: the randomly initialised
GPT-2-small shape (12 x 768) of the serving benchmark, `--threads` torch threads (1), on `--device` (CUDA in
bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.learning.stack import CACHE, builtin_sft_dir
from benchmarks.serving_load import bare_loop, prompt_batch, random_gpt2_dir


def rollout(lm, batch: int, tokens: int, grow: bool) -> tuple[float, torch.Tensor]:
    """Seconds of one `sample_tokens` call (PPO's rollout sampling) and its tokens; `grow` False: the model's
    own cache."""
    from training.devices import synchronize
    from training.rollout import sample_tokens
    ids, mask = prompt_batch(lm, batch)
    t0 = time.perf_counter()
    toks, _ = sample_tokens(lm.model, ids, mask, tokens, 1.0, -1, lm.pad_id, torch.Generator().manual_seed(0),
                            kv_room=None if grow else 0)
    synchronize(lm.device)
    return time.perf_counter() - t0, toks


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--batches", default="1,4,16,32")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rollout-batch", type=int, default=32)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the server's decode thread runs one)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serving/kv_cache.json"))
    args = p.parse_args(argv)
    from service.decoder import GROW_COLUMNS
    from service.model_pool import load_model_dir
    from training.devices import resolve_device
    torch.set_num_threads(args.threads)
    model_dir = args.model_dir or random_gpt2_dir(builtin_sft_dir(0), CACHE / "gpt2-small-random")
    lm = load_model_dir(model_dir, "bench", resolve_device(args.device))
    steps: dict[int, dict[str, list[float]]] = {}
    for b in (int(x) for x in args.batches.split(",")):
        steps[b] = {"growing": [], "own": []}
        for _ in range(args.pairs):
            for name, grow in (("growing", GROW_COLUMNS), ("own", 0)):
                steps[b][name].append(bare_loop(model_dir, b, args.tokens, 1, args.device, grow)["decode_step_s"])
        print(f"batch {b:3d}: step {statistics.median(steps[b]['own']) * 1e3:7.2f} ms with the model's own cache, "
              f"{statistics.median(steps[b]['growing']) * 1e3:7.2f} ms growing in place", flush=True)
    rolls = {"growing": [], "own": []}
    for _ in range(args.pairs):
        grown_s, grown = rollout(lm, args.rollout_batch, args.tokens, True)
        own_s, own = rollout(lm, args.rollout_batch, args.tokens, False)
        assert torch.equal(grown, own), "the two caches sampled different tokens"
        rolls["growing"].append(grown_s)
        rolls["own"].append(own_s)
    med = {k: statistics.median(v) for k, v in rolls.items()}
    print(f"PPO rollout sampling, batch {args.rollout_batch} x {args.tokens} tokens: {med['own']:.2f} s with the "
          f"model's own cache, {med['growing']:.2f} s growing in place ({med['own'] / med['growing']:.2f}x)")
    out = {"model_dir": str(model_dir), "device": str(lm.device), "tokens": args.tokens, "grow_columns": GROW_COLUMNS,
           "decode_step_s": {b: {k: statistics.median(v) for k, v in s.items()} for b, s in steps.items()},
           "decode_step_speedup": {b: statistics.median(s["own"]) / statistics.median(s["growing"])
                                   for b, s in steps.items()},
           "rollout_s": med, "rollout_speedup": med["own"] / med["growing"], "runs": {"steps": steps, "rollout": rolls}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {args.out}")
    return out


if __name__ == "__main__":
    main()
