"""`rlhf-serve`: the command line. Each command parses flags and delegates."""

from __future__ import annotations

import argparse
import logging
import sys

from rlhf_core.settings import Settings, load_settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help="Redis URL (env RLHF_REDIS_URL or REDIS_URL)")
    p.add_argument("--registry", help="model registry directory (env RLHF_REGISTRY)")
    p.add_argument("--key-prefix", help="Redis key prefix (env RLHF_KEY_PREFIX)")


def _settings(args) -> Settings:
    names = ("redis_url", "registry", "key_prefix", "port", "metrics_port", "host", "device", "base_model",
             "max_batch_size", "batch_wait_ms", "max_queue", "admin_token", "api_tokens", "insecure_admin",
             "tls_cert", "tls_key", "tls_client_ca", "health_port")
    return load_settings(**{n: getattr(args, n, None) for n in names})


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (env RLHF_HOST)")
    p.add_argument("--port", type=int, help="gRPC port, 0 = any free (env RLHF_PORT)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = any free, -1 = off (env RLHF_METRICS_PORT)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (env RLHF_DEVICE)")
    p.add_argument("--max-batch-size", type=int, help="candidates per batch (env RLHF_MAX_BATCH_SIZE)")
    p.add_argument("--batch-wait-ms", type=float, help="batch collection window (env RLHF_BATCH_WAIT_MS)")
    p.add_argument("--max-queue", type=int, help="queued requests before RESOURCE_EXHAUSTED (env RLHF_MAX_QUEUE)")
    p.add_argument("--base-model", help="local Hugging Face directory to register as version 1 (env RLHF_BASE_MODEL)")
    p.add_argument("--insecure-admin", action="store_true", default=None,
                   help="dev only: serve AdminService without RLHF_ADMIN_TOKEN (env RLHF_INSECURE_ADMIN)")
    p.add_argument("--tls-cert", help="PEM server certificate: serve gRPC over TLS (env RLHF_TLS_CERT)")
    p.add_argument("--tls-key", help="PEM key of --tls-cert (env RLHF_TLS_KEY)")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed, mTLS (env RLHF_TLS_CLIENT_CA)")
    p.add_argument("--health-port", type=int, help="plaintext grpc.health.v1 port for probes, -1 = off (env RLHF_HEALTH_PORT)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-serve", description=__doc__)
    parser.add_argument("--log-level", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "run the gRPC server"), ("up", "bootstrap, then server + worker + beat"),
                        ("bootstrap", "register version 1 if the registry is empty")):
        p = sub.add_parser(name, help=help_)
        _common(p)
        _serve_flags(p)
    p = sub.add_parser("generate", help="call Generate on a running server")
    p.add_argument("prompt")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("-n", "--num-candidates", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--model-version", default="")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--token", default="", help="bearer token when the server requires one")
    p.add_argument("--ca", help="PEM CA that signed the server's certificate: connect over TLS")
    p.add_argument("--cert", help="PEM client certificate (mTLS; with --key)")
    p.add_argument("--key", help="PEM key of --cert")
    fb = sub.add_parser("feedback", help="export or import the feedback log as JSONL")
    fbs = fb.add_subparsers(dest="action", required=True)
    p = fbs.add_parser("export")
    p.add_argument("-o", "--output", default="-")
    _common(p)
    p = fbs.add_parser("import")
    p.add_argument("file")
    _common(p)
    models = sub.add_parser("models", help="list, promote or roll back model versions")
    ms = models.add_subparsers(dest="action", required=True)
    _common(ms.add_parser("list"))
    p = ms.add_parser("promote")
    p.add_argument("version")
    _common(p)
    p = ms.add_parser("rollback")
    p.add_argument("version", nargs="?", default="")
    _common(p)
    p = ms.add_parser("prune", help="delete versions the retention policy does not keep")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    p.add_argument("--keep-refused", type=int, help="newest refused versions to keep (env RLHF_RETENTION_KEEP_REFUSED)")
    _common(p)
    p = sub.add_parser("train", help="queue a training round now")
    p.add_argument("--now", action="store_true", required=True)
    p.add_argument("--force", action="store_true", help="run even with little new feedback")
    p.add_argument("--wait", action="store_true", help="wait for the round and print its summary")
    _common(p)
    for name in ("worker", "beat"):
        sub.add_parser(name, help=f"start a Celery {name}; other arguments go to `celery {name}`")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("worker", "beat"):
        args.celery_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    settings = _settings(args)
    logging.basicConfig(level=args.log_level or settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rlhf_serve import commands
    handler = getattr(commands, f"cmd_{args.command}")
    return handler(args, settings) or 0


if __name__ == "__main__":
    sys.exit(main())
