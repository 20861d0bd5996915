"""One training round on the built-in model, stage by stage, and the hot-swap it causes.

    .venv/bin/python -m benchmarks.round [--feedback 384] [--out benchmarks/results/round]

A server runs on the built-in SFT model; simulated users (the empathetic annotator, 10% noise)
give feedback through the API; then the round's stages (workers/rounds.py, exactly what the
Celery tasks call) run in this process with the service's default training settings, each timed;
the server hot-swaps to the result. Prints and writes result.json: seconds per stage, reward-model
held-out accuracy, reward and KL of parent and candidate, the gate's decision, swap time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.learning.annotators import make_annotator
from benchmarks.learning.harness import collect_feedback
from rlhf.v1 import policy_pb2
from rlhf_core.settings import Settings
from benchmarks.learning.stack import builtin_sft_dir, register_sft
from rlhf_serve.local import LocalServer, delete_prefix, metric_value, unique_prefix
from training.text_format import train_prompts
from workers import rounds

STAGES = (("snapshot", rounds.snapshot), ("reward_model", rounds.train_reward), ("ppo", rounds.ppo),
          ("evaluate", rounds.evaluate), ("publish", rounds.publish))


def run_round(settings: Settings) -> tuple[dict, dict]:
    """(the round's record, seconds per stage)."""
    ctx = rounds.Context(settings)
    state = rounds.begin(ctx, uuid.uuid4().hex[:12], trigger="benchmark")
    seconds = {}
    for name, stage in STAGES:
        started = time.perf_counter()
        state = stage(ctx, state)
        seconds[name] = time.perf_counter() - started
    return state.record(), seconds


def wait_for_swap(server: LocalServer, version: str, timeout: float = 120) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.policy.GetModel(policy_pb2.GetModelRequest()).model_version == version:
            return metric_value(server.metrics_text(), "rlhf_model_swap_duration_seconds_sum")
        time.sleep(0.1)
    raise TimeoutError(f"server did not swap to {version}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feedback", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/round"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), key_prefix=unique_prefix("bench"),
                     registry=Path(tmp) / "registry", port=0, metrics_port=0, host="127.0.0.1", seed=args.seed)
        register_sft(s, builtin_sft_dir(0), "builtin-sft (seed 0)")
        server = LocalServer(s).start()
        try:
            rng = random.Random(args.seed)
            prompts = [rng.choice(train_prompts()) for _ in range(args.feedback)]
            started = time.perf_counter()
            counts = collect_feedback(server.policy, prompts, make_annotator("empathetic", 0.1), rng, rating_share=0.5,
                                      sampling=policy_pb2.SamplingParams(max_new_tokens=48))
            feedback_s = time.perf_counter() - started
            summary, seconds = run_round(s)
            swap_s = wait_for_swap(server, summary["version"]) if summary["promoted"] else None
        finally:
            server.stop()
            delete_prefix(s.redis_url, s.key_prefix)
    ev = summary["evaluation"]
    result = {"feedback_items": counts.submitted, "feedback_seconds": feedback_s, "stage_seconds": seconds,
              "round_seconds": sum(seconds.values()), "reward_model": summary["reward_model"], "ppo": summary["ppo"],
              "parent": ev["parent"], "candidate": ev["candidate"], "promoted": summary["promoted"],
              "reason": summary["reason"], "swap_seconds": swap_s}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"{counts.submitted} feedback items through the API in {feedback_s:.1f}s")
    print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    print(f"reward model: held-out accuracy {summary['reward_model']['heldout_accuracy']:.3f}, "
          f"train loss {summary['reward_model']['train_loss']:.3f}")
    print(f"RM score parent {ev['parent']['mean_reward']:.3f} -> candidate {ev['candidate']['mean_reward']:.3f}; "
          f"KL to SFT parent {ev['parent']['kl']:.2f} -> candidate {ev['candidate']['kl']:.2f}")
    print(f"gate: {'promoted' if summary['promoted'] else 'rejected'} ({summary['reason']}); "
          f"hot-swap load+verify {swap_s if swap_s is None else f'{swap_s:.2f}s'}")
    return result


if __name__ == "__main__":
    main()
