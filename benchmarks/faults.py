"""Faults and hostile input against a real stack: what a client sees, what is lost, how long recovery takes.

    .venv/bin/python -m benchmarks.faults [--only NAME ...] [--fuzz-cases 300] [--out benchmarks/results/faults]

A private redis-server (AOF, fsync always; never the shared Redis), a registry holding the tests'
tiny model, an in-process server, and (for the worker fault) real Celery worker and beat
processes. Each scenario runs on its own; one that errors records its error and the others still
run. Writes result.json and prints one line per fault. Targets: 0 innocent calls failed by a bad
neighbour; 0 acknowledged feedback lost; 0 crash loops; 0 UNKNOWN/INTERNAL in the fuzz run.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import redis

from benchmarks import fuzzing
from benchmarks.fault_stack import Proc, RedisProcess, register_sft, tiny_model_dir
from registry import Registry
from rlhf.v1 import admin_pb2, policy_pb2, records_pb2
from rlhf_serve.local import LocalServer, unique_prefix
from rlhf_core.settings import Settings

PROMPT = "My order hasn't arrived. What should I do?"


def code_of(fn) -> tuple[str, str, object]:
    try:
        return "OK", "", fn()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", None


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.redis_proc = RedisProcess(tmp / "redis").start()
        self.settings = Settings(redis_url=self.redis_proc.url, key_prefix=unique_prefix("faults"),
                                 registry=tmp / "registry", port=0, metrics_port=0, host="127.0.0.1", device="cpu",
                                 batch_wait_ms=50.0, max_batch_size=32)
        self.model_dir = tiny_model_dir()
        self.v1 = register_sft(self.settings, self.model_dir, "tiny sft")
        self.server = LocalServer(self.settings).start()
        self.r = redis.Redis.from_url(self.settings.redis_url)
        self.acked: set[str] = set()

    def generate(self, n: int = 1, seed: int = 0, timeout: float = 60, user: str = "bench") -> policy_pb2.GenerateResponse:
        return self.server.policy.Generate(policy_pb2.GenerateRequest(
            prompt=PROMPT, num_candidates=n, sampling=policy_pb2.SamplingParams(max_new_tokens=8, seed=seed),
            user_id=user), timeout=timeout)

    def rate(self, response_id: str, user: str = "bench", key: str = "", up: bool = True) -> policy_pb2.FeedbackAck:
        ack = self.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
            rating=policy_pb2.Rating(response_id=response_id, thumbs_up=up), user_id=user, idempotency_key=key),
            timeout=30)
        self.acked.add(ack.feedback_id)
        return ack

    def stream_ids(self) -> set[str]:
        key = self.settings.key_prefix + "feedback"
        return {eid.decode() for eid, _ in self.r.xrange(key)}

    def stop(self) -> None:
        self.server.stop()
        self.redis_proc.kill()


def _batch(stack: Stack, b: int, innocents: int, bad_temperature: float) -> list[str]:
    """innocents + 1 Generate calls released together (one batch); the last one uses bad_temperature."""
    barrier = threading.Barrier(innocents + 1)

    def call(i: int):
        temperature = bad_temperature if i == innocents else 1.0
        sampling = policy_pb2.SamplingParams(max_new_tokens=8, seed=100 * b + i, temperature=temperature)
        req = policy_pb2.GenerateRequest(prompt=PROMPT, sampling=sampling)
        barrier.wait()
        return code_of(lambda: stack.server.policy.Generate(req, timeout=60))[0]
    with ThreadPoolExecutor(innocents + 1) as pool:
        return list(pool.map(call, range(innocents + 1)))


def bad_neighbour(stack: Stack, batches: int = 4, innocents: int = 15) -> dict:
    """A request with temperature 1e-40 batched with innocent ones; baseline: the same batch with 0.7."""
    baseline = collections.Counter(c for b in range(batches) for c in _batch(stack, b, innocents, 0.7)[:-1])
    innocent_codes, bad_codes = collections.Counter(), collections.Counter()
    for b in range(batches):
        codes = _batch(stack, b, innocents, 1e-40)
        innocent_codes.update(codes[:-1])
        bad_codes[codes[-1]] += 1
    failed = sum(n for c, n in innocent_codes.items() if c != "OK")
    return {"innocent_calls": batches * innocents, "innocent_failed": failed, "innocent_codes": dict(innocent_codes),
            "bad_request_codes": dict(bad_codes), "baseline_innocent_codes": dict(baseline),
            "target_met": failed == 0}


def path_like_version(stack: Stack) -> dict:
    """model_version values that are paths or aliases of a real version."""
    other = Registry(stack.tmp / "other")
    manifest = records_pb2.ModelManifest(base_model="outside")
    manifest.promotion.promoted = True
    outside = other.publish(stack.model_dir, manifest).version
    names = {"absolute": str(other.path(outside)), "relative": f"../../other/versions/{outside}",
             "trailing_slash": f"{stack.v1}/", "dot_prefix": f"./{stack.v1}", "dot_suffix": f"{stack.v1}/.",
             "10k_chars": "v" * 10_000}
    out, served, leaks = {}, 0, 0
    for label, name in names.items():
        for rpc, fn in (("GetModel", lambda: stack.server.policy.GetModel(
                policy_pb2.GetModelRequest(model_version=name), timeout=60)),
                        ("Generate", lambda: stack.server.policy.Generate(policy_pb2.GenerateRequest(
                            prompt=PROMPT, model_version=name, sampling=policy_pb2.SamplingParams(max_new_tokens=4)),
                            timeout=60))):
            code, details, _ = code_of(fn)
            out[f"{label}/{rpc}"] = code
            served += code == "OK"
            # a leak: the server's own registry path, or a path the client did not send (its own
            # string may be quoted back, clipped)
            leaks += (str(stack.settings.registry) in details or (str(stack.tmp) in details and str(stack.tmp) not in name)
                      or len(details) > 300)
    return {"codes": out, "accepted": served, "messages_leaking_paths_or_long": leaks,
            "target_met": served == 0 and leaks == 0}


def idempotency_squat(stack: Stack) -> dict:
    """An attacker sends feedback under alice's user_id and next idempotency key before she does."""
    ids = [c.response_id for c in stack.generate(2, seed=7, user="alice").candidates]
    as_other, _, _ = code_of(lambda: stack.rate(ids[0], user="mallory", key="alice-42", up=False))
    attacker = stack.rate(ids[0], user="alice", key="alice-42", up=False)  # claims to be alice
    code, details, ack = code_of(lambda: stack.rate(ids[0], user="alice", key="alice-42", up=True))
    stored = [records_pb2.FeedbackEvent.FromString(f[b"event"])
              for _, f in stack.r.xrange(stack.settings.key_prefix + "feedback")]
    mine = [e for e in stored if e.idempotency_key == "alice-42"]
    silently_squatted = code == "OK" and ack.duplicate and ack.feedback_id == attacker.feedback_id
    return {"other_user_code": as_other, "alice_code": code, "alice_told_duplicate": bool(ack and ack.duplicate), "stored_events": len(mine),
            "stored_kind": [records_pb2.FeedbackEvent.Kind.Name(e.kind) for e in mine],
            "silently_squatted": silently_squatted, "target_met": not silently_squatted}


def redis_outage(stack: Stack, outage_s: float = 3.0) -> dict:
    """kill -9 of Redis (AOF fsync always), calls during the outage, restart, time to recover."""
    before = [stack.rate(c.response_id, key=f"pre-{i}").feedback_id
              for i, c in enumerate(stack.generate(4, seed=11).candidates)]
    spare = [c.response_id for c in stack.generate(4, seed=12).candidates]
    stack.redis_proc.kill()
    down_at = time.monotonic()
    gen, fb = collections.Counter(), collections.Counter()
    while time.monotonic() - down_at < outage_s:
        gen[code_of(lambda: stack.generate(seed=13, timeout=10))[0]] += 1
        fb[code_of(lambda: stack.rate(spare[0], key=f"during-{time.monotonic_ns()}"))[0]] += 1
    stack.redis_proc.start()
    up_at, recovered = time.monotonic(), None
    while time.monotonic() - up_at < 60:
        code, _, _ = code_of(lambda: stack.rate(stack.generate(seed=14, timeout=10).candidates[0].response_id))
        if code == "OK":
            recovered = time.monotonic() - up_at
            break
        time.sleep(0.1)
    lost = set(before) - stack.stream_ids()
    return {"during_outage": {"Generate": dict(gen), "SubmitFeedback": dict(fb)}, "acked_before": len(before),
            "acked_lost": len(lost), "seconds_to_recover": recovered,
            "target_met": not lost and recovered is not None and set(fb) <= {"UNAVAILABLE"} and set(gen) == {"OK"}}


def corrupt_promotion(stack: Stack, restarts: int = 2) -> dict:
    """A version whose checksums match but whose weights are garbage is promoted."""
    bad_dir = stack.tmp / "corrupt"
    shutil.copytree(stack.model_dir, bad_dir)
    for weights in bad_dir.glob("*.safetensors"):
        weights.write_bytes(b"\x00garbage" * 4096)
    registry = Registry(stack.settings.registry)
    manifest = records_pb2.ModelManifest(parent_version=stack.v1, base_model="corrupt")
    bad = registry.publish(bad_dir, manifest).version
    promote_code, _, _ = code_of(lambda: stack.server.admin.Promote(
        admin_pb2.PromoteRequest(model_version=bad), timeout=60))
    time.sleep(3)  # the running server notices the pointer
    serving = collections.Counter(code_of(lambda: stack.generate(seed=i).model_version)[0] for i in range(5))
    failed_starts, serves = 0, []
    for _ in range(restarts):
        fresh = LocalServer(stack.settings.model_copy(update={"metrics_port": -1}))
        try:
            fresh.start(timeout=120)
            serves.append(fresh.policy.GetModel(policy_pb2.GetModelRequest(), timeout=30).model_version)
            fresh.stop()
        except Exception:
            failed_starts += 1
    listed = [m.model_version for m in stack.server.admin.ListModels(admin_pb2.ListModelsRequest()).models
              if m.current]
    stack.server.admin.Promote(admin_pb2.PromoteRequest(model_version=stack.v1), timeout=60)  # restore
    return {"promote_code": promote_code, "running_server_calls": dict(serving), "new_server_failed_starts":
            failed_starts, "new_servers_serve": serves, "models_list_current": listed,
            "target_met": failed_starts == 0 and set(serving) == {"OK"}}


def worker_kill(stack: Stack, timeout_s: float = 150.0) -> dict:
    """kill -9 of the worker during PPO; a new worker and beat (reaper) take over."""
    responses = stack.generate(2, seed=21).candidates
    for i in range(6):
        a, b = stack.generate(2, seed=30 + i).candidates
        ack = stack.server.policy.SubmitFeedback(policy_pb2.FeedbackRequest(
            comparison=policy_pb2.Comparison(chosen_response_id=a.response_id, rejected_response_id=b.response_id),
            user_id="bench", idempotency_key=f"cmp-{i}"), timeout=30)
        stack.acked.add(ack.feedback_id)
    del responses
    logs = stack.tmp / "procs"
    logs.mkdir(exist_ok=True)
    procs = [Proc("worker", stack.settings, logs)]
    tmp_dir, p = stack.settings.registry / ".tmp", stack.settings.key_prefix
    try:
        stack.server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True), timeout=30)
        _wait(lambda: any(json.loads(v)["stage"] == "ppo" for v in stack.r.hvals(p + "train:active")), 240,
              "the round to run PPO")
        time.sleep(1)
        procs[0].kill()
        killed = time.monotonic()
        procs += [Proc("worker", stack.settings, logs), Proc("beat", stack.settings, logs)]
        record = None
        while time.monotonic() - killed < timeout_s and record is None:
            raw = stack.r.lindex(p + "train:rounds", 0)
            record = json.loads(raw) if raw else None
            time.sleep(0.5)
        recorded_s = time.monotonic() - killed if record else None
        versions = sorted(v.name for v in (stack.settings.registry / "versions").iterdir())
        result = {"recorded_after_s": recorded_s, "record": record, "lock_held": bool(stack.r.exists(p + "train:lock")),
                  "scratch_dirs_left": len(list(tmp_dir.glob("round-*"))), "versions": versions,
                  "acked_lost": len(stack.acked - stack.stream_ids())}
        redeliver_unacked(stack.settings)  # what Celery does once the 1 h visibility timeout passes
        end = time.monotonic() + 30
        while time.monotonic() < end and "no longer active" not in procs[1].output():
            time.sleep(0.3)
        time.sleep(1)
        result["stale_redelivery_stopped"] = "no longer active" in procs[1].output()
        result["history_entries"] = stack.r.llen(p + "train:rounds")
        result["target_met"] = bool(record and record.get("failed")) and result["history_entries"] == 1 and \
            result["stale_redelivery_stopped"] and not result["lock_held"] and not result["scratch_dirs_left"]
        return result
    finally:
        for proc in procs:
            proc.stop()


def redeliver_unacked(settings) -> None:
    from celery import Celery
    from rlhf_core.tasks import celery_connection_conf
    conf = celery_connection_conf(settings)
    conf["broker_transport_options"] = {**conf["broker_transport_options"], "visibility_timeout": 0}
    app = Celery("redeliver")
    app.conf.update(conf)
    with app.connection_for_write() as conn:
        conn.default_channel.qos.restore_visible(num=100)


def fuzz(stack: Stack, cases: int = 300) -> dict:
    ids = [c.response_id for c in stack.generate(2, seed=5).candidates]
    started = time.perf_counter()
    outcome = fuzzing.run(stack.server.channel, cases, seed=2026, ids=ids, registry_root=str(stack.tmp))
    still = code_of(lambda: stack.generate(seed=6))[0]
    bad_codes = outcome.codes["UNKNOWN"] + outcome.codes["INTERNAL"]
    return {"cases": cases, "seconds": time.perf_counter() - started, "codes": dict(outcome.codes),
            "unknown_or_internal": bad_codes, "undocumented_or_leaking": len(outcome.bad),
            "examples": outcome.bad[:5], "serves_afterwards": still == "OK",
            "target_met": bad_codes == 0 and not outcome.bad and still == "OK"}


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


SCENARIOS = {"fuzz": fuzz, "bad_neighbour": bad_neighbour, "path_like_version": path_like_version,
             "idempotency_squat": idempotency_squat, "redis_outage": redis_outage,
             "corrupt_promotion": corrupt_promotion, "worker_kill": worker_kill}


def summary_line(name: str, r: dict) -> str:
    if "error" in r:
        return f"{name:18s} ERROR {r['error']}"
    keep = {k: v for k, v in r.items() if k not in ("examples", "record", "target_met", "seconds_total")}
    return f"{name:18s} {'met ' if r.get('target_met') else 'MISS'} {json.dumps(keep, default=str)[:300]}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--fuzz-cases", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/faults"))
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rlhf-faults-") as tmp:
        stack = Stack(Path(tmp))
        try:
            for name in args.only:
                started = time.perf_counter()
                try:
                    fn = SCENARIOS[name]
                    results[name] = fn(stack, args.fuzz_cases) if name == "fuzz" else fn(stack)
                except Exception as exc:
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                                     "traceback": traceback.format_exc()[-2000:], "target_met": False}
                results[name]["seconds_total"] = round(time.perf_counter() - started, 2)
                print(summary_line(name, results[name]), flush=True)
            lost = len(stack.acked - stack.stream_ids())
        finally:
            stack.stop()
    targets = {"innocent_calls_failed_by_bad_neighbour": results.get("bad_neighbour", {}).get("innocent_failed"),
               "acked_feedback_lost": lost,
               "crash_loops": results.get("corrupt_promotion", {}).get("new_server_failed_starts"),
               "fuzz_unknown_or_internal": results.get("fuzz", {}).get("unknown_or_internal")}
    result = {"scenarios": results, "targets": targets, "acked_total": len(stack.acked)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print("targets (all should be 0):", json.dumps(targets))
    return result


if __name__ == "__main__":
    main()
