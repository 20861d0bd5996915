"""PPO speed and memory: this project's PPO (full and LoRA) against TRL 1.12's PPOTrainer, in one run.

    .venv/bin/python -m benchmarks.ppo_speed [--models builtin,gpt2-86m] [--episodes 32] [--batch 8]
        [--tokens 32] [--epochs 1] [--trl-venv .tools/trl-venv] [--out benchmarks/results/ppo_speed]

Same local model directory, prompts (token ids rendered by the project's prompt format), batch,
response length, PPO epochs (one mini-batch per step) on every side. TRL runs in its own
virtualenv, made here on first use (``python -m venv``; the local torch wheel first, then
``trl==1.12.0``): it is never a project dependency. Each side runs in a subprocess, so its peak
resident memory (ru_maxrss) is its own. Throughput counts the steps after the first (which pays
imports and one-off allocations) on every side. Models: the built-in SFT model and a randomly
initialised GPT-2-small shape (12 x 768) on the built-in tokenizer (86M parameters).
Also measured on the 86M shape: adapter hot-swap time and bytes, 0 failed requests under load,
and merged vs unmerged decode speed (benchmarks/lora_swap.py). Writes result.json + speed.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
SIDES = ("ours-full", "ours-lora", "trl")


def ensure_trl_venv(venv: Path, log=print) -> Path:
    """TRL 1.12's own virtualenv (created on first use); returns its python."""
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import trl"], capture_output=True).returncode == 0:
        return python
    import torch

    log(f"creating TRL virtualenv at {venv} (torch {torch.__version__.split('+')[0]}, trl 1.12.0)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run(pip + ["trl==1.12.0"], check=True)
    return python


def random_gpt2_dir(tokenizer_dir: Path, out: Path, n_layer: int = 12, n_embd: int = 768) -> Path:
    """A randomly initialised GPT-2 of the given shape on the built-in tokenizer (cached)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64),
                     n_positions=256, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def model_dirs(names: list[str], builtin: Path | None) -> dict[str, Path]:
    from benchmarks.learning.stack import builtin_sft_dir

    base = builtin or builtin_sft_dir(0)
    shapes = {"gpt2-86m": (12, 768), "gpt2-11m": (6, 384)}
    return {n: (base if n == "builtin" else random_gpt2_dir(base, CACHE / n, *shapes[n])) for n in names}


# --- one side, in its own process --------------------------------------------------------------

def run_ours(spec: dict) -> dict:
    """This project's PPO on ``spec`` (mode full|lora); the reward model was prepared beforehand."""
    import torch

    from training.config import PPOConfig
    from training.lora import FinetuneConfig
    from training.text_format import train_prompts

    from rlhf_core.settings import Settings
    from training.devices import allow_cudnn_attention

    torch.set_num_threads(spec["threads"])
    allow_cudnn_attention(Settings().cudnn_attention)  # as a worker process sets it
    prompts = train_prompts()[: spec["episodes"]]
    B = spec["batch_size"]
    cfg = PPOConfig(steps=spec["episodes"] // B, rollout_batch_size=B, mini_batch_size=B, ppo_epochs=spec["epochs"],
                    max_new_tokens=spec["response_length"], temperature=spec["temperature"], lr=spec["lr"],
                    init_kl_coef=spec["kl_coef"], seed=spec["seed"])
    stamps, lens = [], []

    def log(_line: str) -> None:
        stamps.append(time.perf_counter())

    started = time.perf_counter()
    if spec["mode"] == "lora":
        from training.lora_ppo import run_lora_ppo
        _, history = run_lora_ppo(spec["model_dir"], spec["model_dir"], spec["reward_dir"], prompts, cfg,
                                  FinetuneConfig(finetune="lora"), log=log)
    else:
        from training.ppo_trainer import run_ppo
        from training.reward_model import RewardModel
        rm = RewardModel.load(spec["reward_dir"])
        _, history = run_ppo(spec["model_dir"], spec["model_dir"], rm, prompts, cfg, log=log)
    total = time.perf_counter() - started
    lens = [h["mean_response_len"] for h in history[1:]] or [history[0]["mean_response_len"]]
    steps = len(stamps)
    timed = (stamps[-1] - stamps[0]) if steps > 1 else total
    samples = (steps - 1) * B if steps > 1 else spec["episodes"]
    mean_len = sum(lens) / len(lens)
    return {"side": f"ours-{spec['mode']}", "steps": steps, "samples": samples, "seconds": timed,
            "total_seconds": total, "samples_per_s": samples / timed, "tokens_per_s": samples * mean_len / timed,
            "mean_response_len": mean_len, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **peak_gpu(torch), "device": "cuda" if torch.cuda.is_available() else "cpu"}


def peak_gpu(torch) -> dict:
    """The process's peak CUDA memory held by tensors (torch's allocator), where it ran on CUDA."""
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


def prepare_reward(spec: dict) -> None:
    """An untrained reward model for ``spec["mode"]`` saved to ``spec["reward_dir"]`` (both sides start untrained)."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    torch.manual_seed(spec["seed"])
    if spec["mode"] == "lora":
        from training.lora import FinetuneConfig, new_reward_model
        new_reward_model(spec["model_dir"], FinetuneConfig(finetune="lora"), tok, 128, torch.device("cpu")).save(
            spec["reward_dir"])
    else:
        from training.reward_model import RewardModel
        RewardModel.from_pretrained_backbone(spec["model_dir"], tok).save(spec["reward_dir"])


def subprocess_json(cmd: list[str], out: Path, log, timeout: float, env: dict | None = None) -> dict:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0 or not out.is_file():
        log(proc.stdout[-2000:] + proc.stderr[-4000:])
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] }"}
    return json.loads(out.read_text())


def run_side(side: str, model_dir: Path, args, trl_python: Path | None, tmp: Path, log) -> dict:
    spec = {"model_dir": str(model_dir), "batch_size": args.batch, "episodes": args.episodes, "epochs": args.epochs,
            "response_length": args.tokens, "temperature": 0.7, "lr": 1e-5, "kl_coef": 0.15, "seed": 0,
            "threads": args.threads}
    out = tmp / f"{side}-{model_dir.name}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    if side == "trl":
        from training.rollout import encode_prompt
        from training.text_format import train_prompts
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(model_dir)
        spec["prompt_ids"] = [encode_prompt(tok, p, 96) for p in train_prompts()[: args.episodes]]
        (tmp / "spec.json").write_text(json.dumps(spec))
        cmd = [str(trl_python), str(ROOT / "benchmarks" / "trl_ppo.py"), str(tmp / "spec.json"), str(out)]
        return subprocess_json(cmd, out, log, args.timeout, env)
    spec.update(mode=side.split("-")[1], reward_dir=str(tmp / f"rm-{side}-{model_dir.name}"))
    (tmp / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "benchmarks.ppo_speed", "--prepare", str(tmp / "spec.json")], check=True,
                   env=env, capture_output=True)
    cmd = [sys.executable, "-m", "benchmarks.ppo_speed", "--worker", str(tmp / "spec.json"), str(out)]
    return subprocess_json(cmd, out, log, args.timeout, env)


def ratios(sides: dict[str, dict]) -> dict[str, float]:
    """samples/s and tokens/s of ours over TRL's; LoRA peak memory over full's."""
    out = {}
    trl = sides.get("trl", {})
    for name in ("ours-full", "ours-lora"):
        ours = sides.get(name, {})
        if "samples_per_s" in ours and "samples_per_s" in trl:
            out[f"{name}_over_trl_samples_per_s"] = ours["samples_per_s"] / trl["samples_per_s"]
            out[f"{name}_over_trl_tokens_per_s"] = ours["tokens_per_s"] / trl["tokens_per_s"]
    for key in ("peak_rss_mb", "peak_gpu_mb"):
        if key in sides.get("ours-lora", {}) and key in sides.get("ours-full", {}):
            out[f"lora_over_full_{key[:-3]}"] = sides["ours-lora"][key] / sides["ours-full"][key]
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    memory = (("peak_gpu_mb", "peak CUDA memory (MB)") if result["device"].startswith("cuda")
              else ("peak_rss_mb", "peak RSS (MB)"))
    for ax, (key, label) in zip(axes, (("samples_per_s", "samples / s"), memory)):
        width = 0.8 / len(SIDES)
        for i, side in enumerate(SIDES):
            vals = [result["models"][m]["sides"].get(side, {}).get(key, 0.0) for m in models]
            ax.bar([j + i * width for j in range(len(models))], vals, width, label=side)
        ax.set_xticks([j + width for j in range(len(models))], models)
        ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(f"PPO: {result['config']['episodes']} episodes, batch {result['config']['batch']}, "
                 f"{result['config']['tokens']} tokens, {result['config']['epochs']} epoch ({result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="builtin,gpt2-86m")
    parser.add_argument("--builtin-dir", type=Path, default=None, help="use this model dir as 'builtin'")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per side (1: on a shared machine more threads spin and slow down)")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--trl-venv", type=Path, default=ROOT / ".tools" / "trl-venv")
    parser.add_argument("--swap", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ppo_speed")
    args = parser.parse_args(argv)
    sides = args.sides.split(",")
    trl_python = ensure_trl_venv(args.trl_venv) if "trl" in sides else None
    import torch
    result = {"config": {k: getattr(args, k) for k in ("episodes", "batch", "tokens", "epochs", "threads")},
              "device": (f"cuda ({torch.cuda.get_device_name()}, bf16)" if torch.cuda.is_available()
                         else f"cpu ({os.cpu_count()} cores, shared)"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_dir in model_dirs(args.models.split(","), args.builtin_dir).items():
            from training.lora import count_parameters
            entry = {"dir": str(model_dir), "parameters": count_parameters(model_dir), "sides": {}}
            for side in sides:
                entry["sides"][side] = run_side(side, model_dir, args, trl_python, Path(tmp), print)
                print(name, side, json.dumps(entry["sides"][side]))
            entry["ratios"] = ratios(entry["sides"])
            result["models"][name] = entry
            print(name, json.dumps(entry["ratios"]))
    if args.swap and "gpt2-86m" in result["models"]:
        from benchmarks.lora_swap import measure_swap
        torch.set_num_threads(args.threads)
        result["swap"] = measure_swap(Path(result["models"]["gpt2-86m"]["dir"]), device="auto")
        print("swap", json.dumps(result["swap"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "speed.png")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        res = run_ours(json.loads(Path(sys.argv[2]).read_text()))
        Path(sys.argv[3]).write_text(json.dumps(res, indent=2))
    elif len(sys.argv) > 1 and sys.argv[1] == "--prepare":
        prepare_reward(json.loads(Path(sys.argv[2]).read_text()))
    else:
        main()
