"""The one-command learning benchmark ("Prove that it learns").

    python -m benchmarks.learning --annotator empathetic --noise 0.1 --rounds 3 \\
        --feedback-per-round 64 --out benchmarks/results/empathetic

starts a throw-away stack (fresh registry + Redis prefix, the built-in SFT model as v0001, the
gRPC server and one `rlhf-serve worker`), lets simulated users give feedback through the public
API, forces R training rounds, evaluates every served version against SFT on the held-out
prompts, and writes result.json, the plots and REPORT.md into ``--out``/seed-<s> for each of
``--seeds`` seeds, then mean and spread over the seeds into ``--out`` (REPORT.md, aggregate.json,
seeds.png). ``--all-annotators`` runs empathetic, concise and clarifying in sequence (one
sub-directory each). Creating the file ``<out>/STOP`` ends the current seed's run after its
current round (the report covers the rounds done).

Feedback modes: ``--thumbs-only`` (users are served one answer and give thumbs up/down only),
``--adversarial-fraction F`` (that share of the ``--users`` votes against the annotator),
``--spammer`` (one more user repeats one opposite vote ``--spam-votes`` times per round with
fresh idempotency keys).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.learning import report, seeds
from benchmarks.learning.annotators import ANNOTATORS, make_annotator
from benchmarks.learning.evaluation import sample_responses
from benchmarks.learning.gate_prompts import gate_prompts
from benchmarks.learning.harness import LearningConfig, run
from benchmarks.learning.stack import TRAINING_KNOBS, Stack, StackConfig, effective_training
from training.text_format import heldout_prompts

STORY_PROMPT = "My order hasn't arrived. What should I do?"
# Run size that met every target with the empathetic annotator (benchmarks/results/empathetic). Its PPO and
# reward-model values (16 steps of 32 rollouts up to 64 tokens, lr 5e-5, KL coef 0.15; RM lr 3e-4, 2 epochs) are the
# defaults of training/config.py, which the worker reads: they are not repeated here.
TUNED = {"rounds": 15, "feedback_per_round": 384, "rating_share": 0.5, "kl_bound": 9.5}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotator", default="empathetic", choices=sorted(ANNOTATORS))
    p.add_argument("--all-annotators", action="store_true", help="run every annotator in sequence")
    p.add_argument("--noise", type=float, default=0.1, help="share of flipped labels")
    p.add_argument("--annotator-temperature", type=float, default=0.0,
                   help="> 0: Bradley-Terry labels instead of the hard argmax")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--feedback-per-round", type=int, default=64)
    p.add_argument("--rating-share", type=float, default=0.2, help="share of feedback given as thumbs up/down")
    p.add_argument("--out", type=Path, default=None, help="output dir (default benchmarks/results/<annotator>)")
    p.add_argument("--seed", type=int, default=0, help="first seed of users, SFT model and rounds")
    p.add_argument("--seeds", type=int, default=3, help="run seeds SEED .. SEED+N-1; report mean and spread")
    p.add_argument("--users", type=int, default=12, help="simulated users (each sends its own user_id)")
    p.add_argument("--thumbs-only", action="store_true", help="users give thumbs up/down only, no comparisons")
    p.add_argument("--adversarial-fraction", type=float, default=0.0,
                   help="share of users who vote the opposite way of the annotator")
    p.add_argument("--spammer", action="store_true",
                   help="one more user repeats an opposite vote --spam-votes times per round (fresh keys)")
    p.add_argument("--spam-votes", type=int, default=300)
    p.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts to evaluate on; 0 = all")
    p.add_argument("--eval-samples", type=int, default=4, help="samples per prompt and side")
    p.add_argument("--no-fresh-eval", dest="fresh_eval", action="store_false",
                   help="skip the second evaluation on prompts no part of the loop sees (fresh_prompts.py)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="token cap of every Generate")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature of feedback and evaluation Generates (default: server's, 1.0)")
    p.add_argument("--feedback-temperature", type=float, default=None,
                   help="sampling temperature of the users' Generates only (default: --temperature)")
    p.add_argument("--time-budget", type=float, default=report.TIME_BUDGET_S,
                   help="seconds: the wall-time target, and no round starts after it")
    p.add_argument("--round-timeout", type=float, default=1200.0, help="seconds to wait for one round")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="SFT model to start from (default: the built-in model, cached in benchmarks/.cache)")
    p.add_argument("--device", default="auto", help="torch device of server and worker")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--keep-going", action="store_true", help="run all rounds even after the budget is spent")
    g = p.add_argument_group("round size (passed to the worker as RLHF_* settings; defaults: TUNED, else the worker's)")
    g.add_argument("--ppo-steps", type=int)
    g.add_argument("--ppo-batch-size", type=int)
    g.add_argument("--ppo-max-new-tokens", type=int)
    g.add_argument("--ppo-lr", type=float)
    g.add_argument("--ppo-temperature", type=float, help="rollout temperature of PPO")
    g.add_argument("--kl-coef", type=float)
    g.add_argument("--adaptive-kl", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--kl-target", type=float)
    g.add_argument("--reward-epochs", type=int)
    g.add_argument("--reward-lr", type=float)
    g.add_argument("--gate-eval-prompts", type=int, dest="eval_prompts_gate",
                   help="held-out prompts the promotion gate scores (RLHF_EVAL_PROMPTS)")
    g.add_argument("--gate-prompts", type=int, default=0,
                   help="prompts of gate_prompts.py (up to 40) the gate judges on beside the 20 held-out ones "
                        "(RLHF_GATE_PROMPTS_FILE; RLHF_EVAL_PROMPTS grows to fit unless --gate-eval-prompts is set)")
    g.add_argument("--gate-min-reward-gain", type=float)
    g.add_argument("--kl-bound", type=float)
    g.add_argument("--train-window", type=int)
    g.add_argument("--ent-coef", type=float, help="PPO entropy bonus (RLHF_PPO__ENT_COEF)")
    g.add_argument("--diversity-floor", type=float,
                   help="PPO penalises bigrams repeated across a rollout batch while its distinct-2 < this x "
                        "SFT's (RLHF_PPO__DIVERSITY_FLOOR)")
    g.add_argument("--diversity-lr", type=float, help="step of that penalty's weight per rollout batch")
    g.add_argument("--repeat-coef-max", type=float, help="ceiling of that penalty's weight")
    g.add_argument("--gate-min-distinct-ratio", type=float, help="gate's distinct-2 floor, share of SFT's")
    g.add_argument("--gate-max-length-ratio", type=float, help="gate's bound on mean length / SFT's")
    g.add_argument("--gate-win-margin", type=float, help="gate: win-rate lower bound must exceed 0.5 + this")
    g.add_argument("--gate-win-confidence", type=float, help="one-sided confidence of the gate's win-rate bound")
    g.add_argument("--gate-samples-per-prompt", type=int,
                   help="samples per held-out prompt and policy the gate's judge compares")
    g.add_argument("--kl-budget-retries", type=int,
                   help="PPO batches over the round's KL budget survived in a row at doubled beta (RLHF_PPO__KL_BUDGET_RETRIES)")
    g.add_argument("--kl-budget-backoff", type=float,
                   help="factor on beta after each such batch (RLHF_PPO__KL_BUDGET_BACKOFF)")
    g.add_argument("--kl-budget-z", type=float,
                   help="standard errors a batch's KL must clear the budget by to count as over (RLHF_PPO__KL_BUDGET_Z)")
    g.add_argument("--kl-round-step", type=float,
                   help="most KL one round may add to its parent's (RLHF_PPO__KL_ROUND_STEP)")
    g.add_argument("--judge-ensemble", type=int, help="reward models the gate's judge averages (RLHF_JUDGE_ENSEMBLE)")
    g.add_argument("--policy-rm-ensemble", type=int,
                   help="reward models whose mean is PPO's reward (RLHF_POLICY_RM_ENSEMBLE)")
    g.add_argument("--round-kl-budget-share", type=float, help="PPO stops past this share of the KL bound; 0: off")
    p.set_defaults(**TUNED)
    return p


def training_settings(args: argparse.Namespace) -> dict[str, Any]:
    knobs = {k: getattr(args, k, None) for k in TRAINING_KNOBS if k != "eval_prompts"}
    knobs["eval_prompts"] = args.eval_prompts_gate
    if args.gate_prompts and args.eval_prompts_gate is None:
        knobs["eval_prompts"] = len(heldout_prompts()) + args.gate_prompts
    return {k: v for k, v in knobs.items() if v is not None}


def story_example(target: str, annotator_name: str, sft_version: str, final_version: str, cfg: LearningConfig,
                  n: int = 3) -> dict[str, Any]:
    """The product-story prompt answered by SFT and by the final version (same seeds)."""
    import grpc

    from rlhf.v1 import policy_pb2, policy_pb2_grpc
    annotator = make_annotator(annotator_name)
    sampling = policy_pb2.SamplingParams(max_new_tokens=cfg.max_new_tokens)
    if cfg.sampling_temperature is not None:
        sampling.temperature = cfg.sampling_temperature
    out: dict[str, Any] = {"prompt": STORY_PROMPT, "sft_version": sft_version, "final_version": final_version}
    with grpc.insecure_channel(target) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        for side, version in (("sft", sft_version), ("final", final_version)):
            texts, _ = sample_responses(stub, STORY_PROMPT, version, n, seed=cfg.seed + 7, sampling=sampling)
            out[side] = [{"text": t, "score": annotator.score(STORY_PROMPT, t)} for t in texts]
    return out


def run_one(args: argparse.Namespace, annotator: str, out_dir: Path, command: str) -> dict[str, Any]:
    started = time.monotonic()
    training = training_settings(args)
    stack_cfg = StackConfig(model_dir=args.model_dir, seed=args.seed, device=args.device, training=training,
                            gate_prompts=gate_prompts(args.gate_prompts) if args.gate_prompts else [],
                            log_dir=out_dir / ".logs", max_new_tokens_default=args.max_new_tokens or 64)
    if args.redis_url:
        stack_cfg.redis_url = args.redis_url
    cfg = LearningConfig(annotator=annotator, noise=args.noise, temperature=args.annotator_temperature,
                         rounds=args.rounds, feedback_per_round=args.feedback_per_round,
                         rating_share=args.rating_share, eval_prompts=args.eval_prompts,
                         eval_samples=args.eval_samples, fresh_eval=args.fresh_eval,
                         max_new_tokens=args.max_new_tokens,
                         sampling_temperature=args.temperature, feedback_temperature=args.feedback_temperature,
                         round_timeout_s=args.round_timeout,
                         seed=args.seed, user_id=f"sim-{annotator}", users=args.users,
                         thumbs_only=args.thumbs_only, adversarial_fraction=args.adversarial_fraction,
                         spam_votes=args.spam_votes if args.spammer else 0)
    print(f"== {annotator} seed {args.seed}: {args.rounds} round(s) x {args.feedback_per_round} feedback "
          f"({report.feedback_mode(vars(cfg))}), noise {args.noise:g}, training {training or 'worker defaults'}",
          flush=True)
    with Stack(stack_cfg, log=lambda s: print(s, flush=True)) as stack:
        cfg.target, cfg.sft_version = stack.target, stack.sft_version
        stop_file = out_dir / "STOP"
        stop_file.unlink(missing_ok=True)
        result = run(cfg, log=lambda s: print(s, flush=True), on_poll=stack.check_worker,
                     deadline_s=None if args.keep_going else args.time_budget, interrupted=stop_file.exists)
        stop_file.unlink(missing_ok=True)
        final = result["rounds"][-1]["version"]
        result["example"] = story_example(stack.target, annotator, stack.sft_version, final, cfg)
    result.update(command=command, training=training, worker_settings=effective_training(training),
                  total_wall_s=time.monotonic() - started,
                  model=str(args.model_dir) if args.model_dir else f"built-in SFT (seed {args.seed})",
                  model_sha256=stack.model_digest)
    head = report.write(result, out_dir, args.time_budget)
    t = head["targets"]
    print(f"== {annotator} final {head['final_version']}: win rate {head['win_rate']:.3f} "
          f"[{head['win_rate_lo']:.3f}, {head['win_rate_hi']:.3f}] ({'met' if t['win_rate']['met'] else 'NOT met'}), "
          f"KL {head['kl_to_sft']:.2f}, distinct-2 ratio {head['distinct_2_ratio']:.2f}, "
          f"time to target {head['time_to_target_s'] if head['time_to_target_s'] is None else round(head['time_to_target_s'])}s, "
          f"total {head['total_wall_s']:.0f}s; all targets met: {head['all_targets_met']}; report {out_dir / 'REPORT.md'}",
          flush=True)
    return head


def run_seeds(args: argparse.Namespace, annotator: str, out_dir: Path, command: str) -> dict[str, Any]:
    """``args.seeds`` runs (seeds args.seed, args.seed+1, ...) into out_dir/seed-<s>, then their aggregate."""
    first = args.seed
    for k in range(args.seeds):
        random.seed(first + k)
        run_one(argparse.Namespace(**{**vars(args), "seed": first + k}), annotator, out_dir / f"seed-{first + k}",
                command)
    agg = seeds.write(out_dir)
    f = agg["figures"]
    print(f"== {annotator} over seeds {agg['seeds']}: win rate {f['win_rate']['mean']:.3f} ± {f['win_rate']['sd']:.3f} "
          f"(min {f['win_rate']['min']:.3f}); all targets met on every seed: {agg['all_targets_met_every_seed']}; "
          f"report {out_dir / 'REPORT.md'}", flush=True)
    return agg


def exit_on_sigterm() -> None:
    """SIGTERM (`kill`, a CI timeout) unwinds like Ctrl-C: the stack's server and Celery worker are
    stopped on the way out instead of being left running without their benchmark."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.gate_prompts <= len(gate_prompts()):
        parser.error(f"--gate-prompts takes 0 to {len(gate_prompts())}, not {args.gate_prompts}")
    exit_on_sigterm()
    command = "python -m benchmarks.learning " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.all_annotators:
        out = args.out or Path("benchmarks/results/all-annotators")
        aggs = [run_seeds(args, name, out / name, command) for name in ("empathetic", "concise", "clarifying")]
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(aggs, indent=1, default=str) + "\n")
        (out / "REPORT.md").write_text(seeds.summary_markdown(aggs, command))
        return 0 if all(a["targets"]["win_rate"]["met_every_seed"] for a in aggs) else 1
    out = args.out or Path("benchmarks/results") / args.annotator
    agg = run_seeds(args, args.annotator, out, command)
    return 0 if agg["all_targets_met_every_seed"] else 1


if __name__ == "__main__":
    sys.exit(main())
