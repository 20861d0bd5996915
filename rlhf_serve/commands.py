"""Implementations of the CLI commands (each translates and delegates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from rlhf_serve.keys import Keys
from rlhf_serve.settings import Settings


def cmd_serve(args, settings: Settings) -> int:
    import asyncio
    from service.app import serve_forever
    asyncio.run(serve_forever(settings))
    return 0


def cmd_bootstrap(args, settings: Settings) -> int:
    from rlhf_serve.default_model import bootstrap
    print(f"current model: {bootstrap(settings)}")
    return 0


def cmd_up(args, settings: Settings) -> int:
    """The whole stack in one terminal: bootstrap, a worker, beat, and the server."""
    from rlhf_serve.default_model import bootstrap
    bootstrap(settings)
    env = dict(os.environ, RLHF_REDIS_URL=settings.redis_url, RLHF_REGISTRY=str(settings.registry),
               RLHF_KEY_PREFIX=settings.key_prefix)
    exe = [sys.executable, "-m", "rlhf_serve.cli"]
    children = [subprocess.Popen(exe + ["worker", "--pool=solo", "-Q", "default,gpu", "--loglevel=INFO"], env=env),
                subprocess.Popen(exe + ["beat", "--loglevel=INFO"], env=env)]
    print("started a Celery worker (queues default,gpu) and beat; starting the server", flush=True)
    try:
        return cmd_serve(args, settings)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)


def cmd_generate(args, settings: Settings) -> int:
    import grpc
    from rlhf.v1 import policy_pb2, policy_pb2_grpc
    sampling = policy_pb2.SamplingParams(max_new_tokens=args.max_new_tokens)
    if args.temperature is not None:
        sampling.temperature = args.temperature
    if args.seed is not None:
        sampling.seed = args.seed
    req = policy_pb2.GenerateRequest(prompt=args.prompt, sampling=sampling, num_candidates=args.num_candidates,
                                     model_version=args.model_version, user_id="cli")
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with grpc.insecure_channel(args.target) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        try:
            if args.stream:
                for chunk in stub.GenerateStream(req, metadata=metadata, timeout=120):
                    if chunk.text_delta:
                        print(chunk.text_delta, end="", flush=True)
                    elif chunk.finish_reason:
                        print(f"\n[{chunk.model_version} {chunk.response_id} "
                              f"{policy_pb2.FinishReason.Name(chunk.finish_reason)}]")
                return 0
            resp = stub.Generate(req, metadata=metadata, timeout=120)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    for c in resp.candidates:
        print(f"[{resp.model_version} {c.response_id}] {c.text}")
    return 0


def cmd_feedback(args, settings: Settings) -> int:
    from rlhf_serve import feedback_io
    r, keys = redis.Redis.from_url(settings.redis_url), Keys(settings.key_prefix)
    if args.action == "export":
        if args.output == "-":
            count = feedback_io.export_jsonl(r, keys, sys.stdout)
        else:
            with open(args.output, "w", encoding="utf-8") as out:
                count = feedback_io.export_jsonl(r, keys, out)
        print(f"exported {count} feedback items", file=sys.stderr)
        return 0
    try:
        with open(args.file, encoding="utf-8") as f:
            events = feedback_io.parse_jsonl(f)
    except (OSError, ValueError) as exc:
        print(f"error: nothing imported: {exc}", file=sys.stderr)
        return 2
    imported, duplicates = feedback_io.import_events(r, keys, events, settings.idempotency_ttl_s,
                                                     settings.recent_prompts)
    print(f"imported {imported} feedback items ({duplicates} already present)", file=sys.stderr)
    return 0


def _admin(settings: Settings):
    from registry import Registry
    from service.admin import AdminCore
    return AdminCore(settings, Registry(settings.registry), Keys(settings.key_prefix))


def cmd_models(args, settings: Settings) -> int:
    from google.protobuf import json_format
    from service.errors import ApiError
    admin = _admin(settings)
    try:
        if args.action == "list":
            for info in admin.list_models().models:
                mark = "*" if info.current else " "
                p = info.promotion
                print(f"{mark} {info.model_version}  parent={info.parent_version or '-':6}  "
                      f"published={info.published_at.ToJsonString()}  promoted={p.promoted}  "
                      f"reward={p.candidate_reward:.3f} (parent {p.parent_reward:.3f})  kl={p.kl_to_reference:.2f}  "
                      f"{info.training.description}")
                if p.checks:  # the gate's figures (a round's version; bootstrap versions have none)
                    print(f"      judge acc={p.judge_accuracy:.2f} (policy RM {info.training.reward_model_accuracy:.2f})  "
                          f"win={p.win_rate:.2f} (lower bound {p.win_rate_lower_bound:.2f})  "
                          f"eos={p.candidate_eos_rate:.2f} (parent {p.parent_eos_rate:.2f})  len={p.length_ratio:.2f}x  "
                          f"distinct-2={p.distinct_2_ratio:.2f}x SFT  "
                          f"failed: {','.join(c.name for c in p.checks if not c.passed) or '-'}  | {p.reason}")
            return 0
        target = args.version if args.action == "promote" else admin.rollback_target(args.version)
        info = admin.move_pointer(target, args.action)
        print(json_format.MessageToJson(info, indent=1))
        return 0
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def cmd_train(args, settings: Settings) -> int:
    task_id = _admin(settings).trigger_round(force=args.force)
    print(f"queued training round: task {task_id}")
    if args.wait:
        from workers.celery_app import app
        started = app.AsyncResult(task_id).get(timeout=3600)
        if not started.get("started"):
            print(f"round not started: {started.get('why')}")
            return 1
        summary = app.AsyncResult(started["result_id"]).get(timeout=24 * 3600, propagate=False)
        print(json.dumps(summary, indent=1, default=str))
    return 0


def _celery_args(args) -> list[str]:
    extra = list(args.celery_args)
    return extra[1:] if extra[:1] == ["--"] else extra


def cmd_worker(args, settings: Settings) -> int:
    from workers.celery_app import app
    app.worker_main(["worker", *_celery_args(args)])
    return 0


def cmd_beat(args, settings: Settings) -> int:
    from workers.celery_app import app
    app.start(["beat", *_celery_args(args)])
    return 0
