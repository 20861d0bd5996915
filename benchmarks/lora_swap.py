"""Adapter versions on one base: hot-swap time and bytes under load, merged vs unmerged decode speed.

    .venv/bin/python -m benchmarks.lora_swap MODEL_DIR [--clients 2] [--repeats 1] [--control] [--no-decode]
        [--out FILE]
    (benchmarks/ppo_speed.py calls measure_swap)

A throw-away registry holds MODEL_DIR as v0001 and a LoRA version on it (random adapter, rank 8);
a real server (LocalServer) serves v0001 while client threads stream GenerateStream calls; the
pointer moves to the adapter version (the publisher's load-and-run probe of that version runs
before the clients start: in a deployment a worker or the admin CLI runs it in another process).
The swap time reported is what a request sees (``under_load.stall_seconds``: the longest wait
between two chunks of any stream running during the swap, minus the median wait before it);
beside it, how long the server took from the pointer moving to serving the new version
(``pointer_to_served_s``, which no request waits for), the server's own metrics (bytes loaded,
base copies, adapter load seconds) and failed requests.
Decode speed: greedy 32-token generation, batch 4, with the base, the merged working copy and the
unmerged peft model.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from training.devices import synchronize

    device = next(model.parameters()).device
    ids = tokenizer(["Hello, I need help with my order"] * batch, return_tensors="pt").to(device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tokenizer.eos_token_id)
            synchronize(device)
            best = min(best, time.perf_counter() - started)
    return batch * new_tokens / best


def decode_speeds(registry, base: str, adapter: str, device: str = "cpu") -> dict:
    from service.model_pool import ModelPool
    from training.devices import resolve_device

    pool = ModelPool(registry, resolve_device(device))
    base_lm = pool.load(base)
    started = time.perf_counter()
    merged = pool.load(adapter, merged=True)
    merged_s = time.perf_counter() - started
    unmerged = ModelPool(registry, resolve_device(device))
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


def stream_once(server, prompt: str, max_new_tokens: int) -> dict:
    """One GenerateStream call: its start, every chunk's arrival (monotonic seconds) and its version."""
    from rlhf.v1 import policy_pb2

    started, stamps, version = time.monotonic(), [], ""
    for chunk in server.policy.GenerateStream(policy_pb2.GenerateRequest(
            prompt=prompt, sampling=policy_pb2.SamplingParams(max_new_tokens=max_new_tokens)), timeout=120):
        stamps.append(time.monotonic())
        version = chunk.model_version or version
    return {"start": started, "stamps": stamps, "version": version}


def _median(xs: list[float]) -> float | None:
    return sorted(xs)[len(xs) // 2] if xs else None


def request_view(requests: list[dict], pointer_set: float, served_new: float, settle_s: float = 0.5) -> dict:
    """What the clients saw of the swap: waits and latencies of the requests running while it happened.

    A wait is a stream's time to its first chunk (``first``) or between two consecutive chunks
    (``next``). The swap window is [pointer set, new version served + ``settle_s``] (so the first
    steps on the new version count). ``stall_seconds``, the swap time a request sees, is the
    largest excess over both kinds of the longest wait overlapping the window over the median wait
    of that kind before it; ``stall_over_worst_before_s`` the excess over the longest wait before it
    (a decoding step that admits new requests takes ~3 plain steps: the median-based figure counts
    such a step as a stall even when no swap happens, see ``control``).
    """
    end = served_new + settle_s
    waits = {k: {"before": [], "during": []} for k in ("first", "next")}
    latency = {"before": [], "during": []}
    for req in requests:
        times = [req["start"], *req["stamps"]]
        for i, (a, b) in enumerate(zip(times, times[1:])):
            when = "during" if b >= pointer_set and a <= end else "before" if b < pointer_set else None
            if when:
                waits["first" if i == 0 else "next"][when].append(b - a)
        overlaps = times[-1] >= pointer_set and times[0] <= end
        when = "during" if overlaps else "before" if times[-1] < pointer_set else None
        if when and len(times) > 1:
            latency[when].append(times[-1] - times[0])
    out, stalls, over_worst = {}, [], []
    for kind, w in waits.items():
        typical, worst_before = _median(w["before"]), max(w["before"], default=None)
        worst = max(w["during"], default=None)
        out[f"{kind}_wait"] = {"median_before_s": typical, "max_before_s": worst_before, "max_during_s": worst,
                               "n_before": len(w["before"]), "n_during": len(w["during"])}
        if typical is not None and worst is not None:
            stalls.append(max(0.0, worst - typical))
            over_worst.append(max(0.0, worst - worst_before))
    return {"stall_seconds": max(stalls, default=None), "stall_over_worst_before_s": max(over_worst, default=None),
            **out,
            "median_latency_before_s": _median(latency["before"]),
            "max_latency_during_s": max(latency["during"], default=None), "requests_during": len(latency["during"])}


def swap_under_load(registry_root: Path, base: str, adapter: str, clients: int = 2, max_new_tokens: int = 8,
                    control_s: float | None = None, device: str = "cpu") -> dict:
    """One swap from ``base`` to ``adapter`` under load, seen by the clients. ``control_s``: no swap
    (the noise floor): the same figures over a window of that many seconds with the pointer left alone."""
    from rlhf.v1 import policy_pb2
    from rlhf_serve.local import LocalServer, delete_prefix, metric_value, unique_prefix
    from rlhf_core.settings import Settings
    from registry.pointer import default_probe, set_current
    from registry import Registry
    from rlhf_core.keys import Keys
    import redis

    s = Settings(redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), key_prefix=unique_prefix("bench"),
                 registry=registry_root, port=0, metrics_port=0, host="127.0.0.1", device=device)
    r = redis.Redis.from_url(s.redis_url)
    set_current(r, Keys(s.key_prefix), Registry(registry_root), base, "bench")
    server = LocalServer(s).start()
    stop, done, errors = threading.Event(), [], []

    def hammer():
        while not stop.is_set():
            try:
                done.append(stream_once(server, "Where is my parcel?", max_new_tokens))
            except Exception as exc:  # counted: the target is 0
                errors.append(repr(exc))

    registry = Registry(registry_root)
    default_probe(registry)(adapter)  # the publisher's check (another process in a deployment): not timed
    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    served_new = pointer_set = float("nan")
    try:
        for t in threads:
            t.start()
        time.sleep(3.0)
        pointer_set = time.monotonic()
        if control_s is None:
            set_current(r, Keys(s.key_prefix), registry, adapter, "bench", probe=lambda _version: None)
        end = time.monotonic() + (120 if control_s is None else control_s)
        while time.monotonic() < end and server.policy.GetModel(policy_pb2.GetModelRequest()).model_version != adapter:
            time.sleep(0.01)
        served_new = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        text = server.metrics_text()
        server.stop()
        delete_prefix(s.redis_url, s.key_prefix)
    return {**request_view(done, pointer_set, served_new),
            "pointer_to_served_s": served_new - pointer_set,
            "watcher_swap_seconds": metric_value(text, "rlhf_model_swap_duration_seconds_sum"),
            "adapter_load_seconds": metric_value(text, "rlhf_model_last_adapter_load_seconds"),
            "bytes_loaded": metric_value(text, "rlhf_model_last_load_bytes"),
            "base_copies": metric_value(text, "rlhf_model_base_copies"),
            "requests_ok": len(done), "requests_failed": len(errors), "errors": errors[:3],
            "served_after": done[-1]["version"] if done else None}


def measure_swap(model_dir: Path, clients: int = 2, decode: bool = True, repeats: int = 1,
                 control: bool = False, device: str = "cpu") -> dict:
    """The result JSON; with ``repeats`` > 1, ``under_load`` is the run with the median stall and
    ``under_load_runs`` holds every run (each a fresh server swapping to a fresh adapter version).
    ``control``: as many runs without a swap (window: the swaps' median pointer-to-served time), the
    noise floor of the stall figure, in ``control`` / ``control_runs``. The server and the decode-speed
    models run on ``device`` (auto: CUDA when present)."""
    from registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        base = publish(registry, model_dir)
        adapters = [publish(registry, random_adapter(model_dir, Path(tmp) / f"a{i}", i + 1), base)
                    for i in range(max(1, repeats))]
        base_bytes = sum(f.size for f in registry.manifest(base).files)
        out = {"base_bytes": base_bytes, **(decode_speeds(registry, base, adapters[0], device) if decode else {})}
        runs = [swap_under_load(registry.root, base, adapter, clients, device=device) for adapter in adapters]
        out["under_load"], out["under_load_runs"] = _median_run(runs), runs
        if control:
            window = _median([run["pointer_to_served_s"] for run in runs])
            controls = [swap_under_load(registry.root, base, adapter, clients, control_s=window, device=device)
                        for adapter in adapters]
            out["control"], out["control_runs"] = _median_run(controls), controls
    return out


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda run: run["stall_seconds"] or 0.0)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the base model (e.g. benchmarks/.cache/gpt2-86m)")
    parser.add_argument("--clients", type=int, default=2, help="streaming clients decoding during the swap")
    parser.add_argument("--no-decode", dest="decode", action="store_false",
                        help="skip the merged/unmerged decode-speed part")
    parser.add_argument("--repeats", type=int, default=1, help="swaps under load, each on a fresh server")
    parser.add_argument("--control", action="store_true",
                        help="also as many runs without a swap: the stall figure's noise floor")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--device", default="cpu", help="cpu, auto (CUDA when present), cuda, cuda:N")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = measure_swap(args.model_dir, args.clients, args.decode, args.repeats, args.control, args.device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
