"""Implementations of the CLI commands (each translates and delegates)."""

from __future__ import annotations

import json
import sys

import redis

from rlhf_core.keys import Keys
from rlhf_core.settings import Settings


def _insecure(settings: Settings) -> bool:
    """Says why and returns True when the settings would serve an open AdminService."""
    from service.tls import InsecureConfig, check_admin
    try:
        check_admin(settings)
    except InsecureConfig as exc:
        print(f"error: {exc}", file=sys.stderr)
        return True
    return False


def cmd_serve(args, settings: Settings) -> int:
    import asyncio
    from service.app import serve_forever
    if _insecure(settings):
        return 2
    asyncio.run(serve_forever(settings))
    return 0


def cmd_bootstrap(args, settings: Settings) -> int:
    from rlhf_serve.default_model import bootstrap
    print(f"current model: {bootstrap(settings)}")
    return 0


def cmd_up(args, settings: Settings) -> int:
    """The whole stack in one terminal: bootstrap, a worker, beat, and the server."""
    from rlhf_serve.default_model import bootstrap
    from rlhf_serve.local import CeleryChild
    if _insecure(settings):
        return 2
    bootstrap(settings)
    port = settings.worker_metrics_port  # worker and beat share one host here: beat takes the next port
    beat_port = str(port + 1 if port > 0 else port)
    children = [CeleryChild("worker", settings, detached=False),
                CeleryChild("beat", settings, env={"RLHF_WORKER_METRICS_PORT": beat_port}, detached=False)]
    print(f"started a Celery worker (queues default,gpu; metrics :{port}) and beat (metrics :{beat_port});"
          " starting the server", flush=True)
    try:
        return cmd_serve(args, settings)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.stop(timeout=30)


def cmd_generate(args, settings: Settings) -> int:
    import grpc
    from rlhf.v1 import policy_pb2, policy_pb2_grpc
    from service.tls import client_channel
    sampling = policy_pb2.SamplingParams(max_new_tokens=args.max_new_tokens)
    if args.temperature is not None:
        sampling.temperature = args.temperature
    if args.seed is not None:
        sampling.seed = args.seed
    req = policy_pb2.GenerateRequest(prompt=args.prompt, sampling=sampling, num_candidates=args.num_candidates,
                                     model_version=args.model_version, user_id="cli")
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with client_channel(args.target, args.ca, args.cert, args.key) as channel:
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


def _ops(settings: Settings):
    from registry.operations import Operations
    return Operations(settings)


def _operation_errors():
    """The plain exceptions of registry.operations: the CLI answers them with exit code 2."""
    from registry import ChecksumError, InvalidVersionName, VersionNotFound
    from registry.operations import NoParent, RoundRunning
    from registry.probe import UnloadableVersion
    return (ChecksumError, InvalidVersionName, VersionNotFound, NoParent, RoundRunning, UnloadableVersion)


def _print_servers(listing) -> None:
    """What each live server (heartbeat in Redis) actually serves, under the version list."""
    print(f"live servers: {len(listing.servers)} (pointer: {listing.pointer_version or '-'})")
    for srv in listing.servers:
        state = "ok" if srv.model_version == listing.pointer_version else (
            f"FALLBACK: {srv.refused_reason}" if srv.fallback else f"behind: {srv.refused_reason or 'loading'}")
        print(f"  {srv.server_id}  serves={srv.model_version}  since={srv.started_at.ToJsonString()}  "
              f"seen={srv.last_heartbeat.ToJsonString()}  {state}")


def cmd_models(args, settings: Settings) -> int:
    from google.protobuf import json_format
    ops = _ops(settings)
    try:
        if args.action == "list":
            listing = ops.list_models()
            for info in listing.models:
                mark = "*" if info.current else " "
                p = info.promotion
                print(f"{mark} {info.model_version}  parent={info.parent_version or '-':6}  "
                      f"published={info.published_at.ToJsonString()}  promoted={p.promoted}  "
                      f"reward={p.candidate_reward:.3f} (parent {p.parent_reward:.3f})  kl={p.kl_to_reference:.2f}  "
                      f"{info.training.description}")
                if p.checks:  # the gate's figures (a round's version; bootstrap versions have none)
                    rms = info.training.reward_model_members
                    print(f"      judge acc={p.judge_accuracy:.2f} (policy RM {info.training.reward_model_accuracy:.2f}"
                          f"{f' x{rms}' if rms > 1 else ''})  "
                          f"win={p.win_rate:.2f} (lower bound {p.win_rate_lower_bound:.2f})  "
                          f"eos={p.candidate_eos_rate:.2f} (parent {p.parent_eos_rate:.2f})  len={p.length_ratio:.2f}x  "
                          f"distinct-2={p.distinct_2_ratio:.2f}x SFT  "
                          f"failed: {','.join(c.name for c in p.checks if not c.passed) or '-'}  | {p.reason}")
                if p.judge_members > 1:
                    print(f"      judges={p.judge_members}  member win rates="
                          f"{' '.join(f'{w:.2f}' for w in p.judge_member_win_rates)}  "
                          f"disagree on {p.judge_disagreement:.0%} of prompts")
            _print_servers(listing)
            return 0
        if args.action == "prune":
            return _prune(args, ops)
        target = args.version if args.action == "promote" else ops.rollback_target(args.version)
        info = ops.move_pointer(target, args.action)
        print(json_format.MessageToJson(info, indent=1))
        return 0
    except _operation_errors() as exc:
        what = "is not registered" if type(exc).__name__ == "VersionNotFound" else ""
        print(f"error: {exc} {what}".rstrip(), file=sys.stderr)
        return 2


def _prune(args, ops) -> int:
    from registry.operations import RoundRunning
    try:
        plan = ops.prune(args.keep_refused, dry_run=args.dry_run)
    except RoundRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for version, why in sorted(plan.keep.items()):
        print(f"keep   {version}  ({why})")
    for version in plan.delete:
        print(f"{'would delete' if args.dry_run else 'deleted'} {version}")
    print(f"{len(plan.keep)} kept, {len(plan.delete)} {'to delete' if args.dry_run else 'deleted'}")
    return 0


def cmd_train(args, settings: Settings) -> int:
    ops = _ops(settings)
    task_id = ops.trigger_round(force=args.force, reason="cli")
    print(f"queued training round: task {task_id}")
    if args.wait:
        summary = ops.wait_for_round(task_id)  # the flags' Redis and key prefix, not the environment's
        if summary.get("started") is False:
            print(f"round not started: {summary.get('why')}")
            return 1
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
