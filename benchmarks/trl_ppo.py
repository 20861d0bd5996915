"""The TRL side of benchmarks/ppo_speed.py: runs in TRL's own virtualenv, imports nothing from the project.

    <trl-venv>/bin/python benchmarks/trl_ppo.py SPEC.json OUT.json

SPEC: {"model_dir", "prompt_ids" (list of token-id lists), "batch_size", "episodes", "response_length",
"epochs", "lr", "kl_coef", "temperature", "seed"}. Policy, reference, value and reward models are all
loaded from ``model_dir`` (value and reward as AutoModelForSequenceClassification, 1 label), as a
user of TRL would set it up. No stop token: every response is ``response_length`` tokens.
Writes samples/s and tokens/s over the steps after the first (the first pays one-off costs) and
the process's peak resident memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main(spec_path: str, out_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(spec.get("threads", 1))
    torch.manual_seed(spec["seed"])
    model_dir = spec["model_dir"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    for m in (value, reward):
        m.config.pad_token_id = tok.pad_token_id
    n = spec["episodes"]
    ids = [spec["prompt_ids"][i % len(spec["prompt_ids"])] for i in range(n)]
    dataset = Dataset.from_dict({"input_ids": ids})
    B = spec["batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        args = PPOConfig(output_dir=tmp, per_device_train_batch_size=B, gradient_accumulation_steps=1,
                         num_mini_batches=1, local_rollout_forward_batch_size=B, total_episodes=n,
                         num_ppo_epochs=spec["epochs"], response_length=spec["response_length"], stop_token=None,
                         temperature=spec["temperature"], learning_rate=spec["lr"], kl_coef=spec["kl_coef"],
                         missing_eos_penalty=None, num_sample_generations=0, report_to=[], save_strategy="no",
                         use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), seed=spec["seed"],
                         logging_steps=10**6, dataloader_num_workers=0)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                             train_dataset=dataset, value_model=value)
        stamps: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, *a, **k):
                stamps.append(time.perf_counter())

        trainer.add_callback(Clock())
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    steps = len(stamps)
    timed = (stamps[-1] - stamps[0]) if steps > 1 else total
    samples = (steps - 1) * B if steps > 1 else n
    result = {"side": "trl", "steps": steps, "samples": samples, "seconds": timed, "total_seconds": total,
              "samples_per_s": samples / timed, "tokens_per_s": samples * spec["response_length"] / timed,
              "mean_response_len": float(spec["response_length"]),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              **({"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}),
              "device": "cuda" if torch.cuda.is_available() else "cpu"}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
