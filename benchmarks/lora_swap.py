"""Adapter versions on one base: hot-swap time and bytes under load, merged vs unmerged decode speed.

    .venv/bin/python -m benchmarks.lora_swap MODEL_DIR      (benchmarks/ppo_speed.py calls measure_swap)

A throw-away registry holds MODEL_DIR as v0001 and two LoRA versions on it (random adapters, rank 8);
a real server (LocalServer) serves v0001 while client threads call Generate; the pointer moves to
the adapter version; the server's own metrics give swap seconds, bytes loaded, base copies, and the
clients count failed requests. Decode speed: greedy 32-token generation, batch 4, with the base, the
merged working copy and the unmerged peft model.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def random_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A rank-8 adapter with random B (so it changes the outputs)."""
    from transformers import AutoTokenizer

    from training.lora import FinetuneConfig, attach_policy_adapter, load_base

    torch.manual_seed(seed)
    model = attach_policy_adapter(load_base(model_dir, torch.device("cpu")), FinetuneConfig(finetune="lora"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(str(out))
    return out


def publish(registry, src: Path, base: str = "") -> str:
    from rlhf.v1 import records_pb2

    m = records_pb2.ModelManifest(parent_version=base, base_model=str(src), adapter_base_version=base)
    m.promotion.promoted = True
    if base:
        m.reference_version = base
    return registry.publish(src, m).version


def decode_tokens_per_s(model, tokenizer, new_tokens: int = 32, batch: int = 4, repeats: int = 2) -> float:
    ids = tokenizer(["Hello, I need help with my order"] * batch, return_tensors="pt")
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tokenizer.eos_token_id)
            best = min(best, time.perf_counter() - started)
    return batch * new_tokens / best


def decode_speeds(registry, base: str, adapter: str) -> dict:
    from service.model_pool import ModelPool

    pool = ModelPool(registry, torch.device("cpu"))
    base_lm = pool.load(base)
    started = time.perf_counter()
    merged = pool.load(adapter, merged=True)
    merged_s = time.perf_counter() - started
    unmerged = ModelPool(registry, torch.device("cpu"))
    unmerged.adapters.bases[base] = base_lm  # same resident base
    started = time.perf_counter()
    un = unmerged.load(adapter, merged=False)
    unmerged_s = time.perf_counter() - started
    tok = base_lm.tokenizer
    return {"decode_tokens_per_s": {"base": decode_tokens_per_s(base_lm.model, tok),
                                    "merged": decode_tokens_per_s(merged.model, tok),
                                    "unmerged": decode_tokens_per_s(un.model, tok)},
            "load_seconds": {"merged": merged_s, "unmerged": unmerged_s},
            "base_copies_in_pool": pool.base_copies}


def swap_under_load(registry_root: Path, base: str, adapter: str, clients: int = 2) -> dict:
    from rlhf.v1 import policy_pb2
    from rlhf_serve.local import LocalServer, delete_prefix, metric_value, unique_prefix
    from rlhf_core.settings import Settings
    from registry.pointer import set_current
    from registry import Registry
    from rlhf_core.keys import Keys
    import redis

    s = Settings(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), key_prefix=unique_prefix("bench"),
                 registry=registry_root, port=0, metrics_port=0, host="127.0.0.1", device="cpu")
    r = redis.Redis.from_url(s.redis_url)
    set_current(r, Keys(s.key_prefix), Registry(registry_root), base, "bench")
    server = LocalServer(s).start()
    stop, ok, errors = threading.Event(), [], []

    def hammer():
        while not stop.is_set():
            try:
                ok.append(server.policy.Generate(policy_pb2.GenerateRequest(
                    prompt="Where is my parcel?", sampling=policy_pb2.SamplingParams(max_new_tokens=8)),
                    timeout=120).model_version)
            except Exception as exc:  # counted: the target is 0
                errors.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        set_current(r, Keys(s.key_prefix), Registry(registry_root), adapter, "bench")
        end = time.monotonic() + 120
        while time.monotonic() < end and server.policy.GetModel(policy_pb2.GetModelRequest()).model_version != adapter:
            time.sleep(0.05)
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        text = server.metrics_text()
        server.stop()
        delete_prefix(s.redis_url, s.key_prefix)
    return {"swap_seconds": metric_value(text, "rlhf_model_swap_duration_seconds_sum"),
            "adapter_load_seconds": metric_value(text, "rlhf_model_last_adapter_load_seconds"),
            "bytes_loaded": metric_value(text, "rlhf_model_last_load_bytes"),
            "base_copies": metric_value(text, "rlhf_model_base_copies"),
            "requests_ok": len(ok), "requests_failed": len(errors), "errors": errors[:3],
            "served_after": ok[-1] if ok else None}


def measure_swap(model_dir: Path) -> dict:
    from registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        base = publish(registry, model_dir)
        adapter = publish(registry, random_adapter(model_dir, Path(tmp) / "a1", 1), base)
        base_bytes = sum(f.size for f in registry.manifest(base).files)
        out = {"base_bytes": base_bytes, **decode_speeds(registry, base, adapter)}
        out["under_load"] = swap_under_load(registry.root, base, adapter)
    return out


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(json.dumps(measure_swap(Path(sys.argv[1])), indent=2))
