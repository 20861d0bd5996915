"""Transport security of the server: secure-by-default admin, TLS/mTLS ports, a probe port.

    check_admin(settings)            # refuses an open AdminService unless --insecure-admin
    port = bind(server, settings)    # TLS when tls_cert/tls_key are set, plaintext otherwise
    client_channel(target, ca=...)   # the CLI's side
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from rlhf_core.settings import Settings


class InsecureConfig(RuntimeError):
    """The settings would start a server that is open in a way the operator did not ask for."""


def check_admin(settings: Settings) -> None:
    """AdminService (Promote, Rollback, TriggerRound) needs a token unless explicitly opened."""
    if not settings.admin_token and not settings.insecure_admin:
        raise InsecureConfig(
            "refusing to start: AdminService (Promote, Rollback, TriggerRound) would be open to anyone. "
            "Set RLHF_ADMIN_TOKEN (e.g. from a Kubernetes Secret), or pass --insecure-admin "
            "(RLHF_INSECURE_ADMIN=true) for local development only")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise InsecureConfig("TLS needs both RLHF_TLS_CERT and RLHF_TLS_KEY (PEM files)")
    if settings.tls_client_ca and not settings.tls_cert:
        raise InsecureConfig("RLHF_TLS_CLIENT_CA (mTLS) needs RLHF_TLS_CERT and RLHF_TLS_KEY too")


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InsecureConfig(f"cannot read TLS file {path}: {exc.strerror}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings; None when TLS is off."""
    if not settings.tls_cert:
        return None
    ca = _read(settings.tls_client_ca)
    return grpc.ssl_server_credentials([(_read(settings.tls_key), _read(settings.tls_cert))],
                                       root_certificates=ca, require_client_auth=ca is not None)


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Adds the gRPC port (TLS or plaintext) and returns the bound port number."""
    address = f"{settings.host}:{settings.port}"
    creds = server_credentials(settings)
    return server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)


async def start_health_server(health_servicer, settings: Settings) -> tuple[grpc.aio.Server | None, int | None]:
    """A plaintext server with grpc.health.v1 only (Kubernetes probes cannot speak TLS)."""
    if settings.health_port < 0:
        return None, None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    await server.start()
    return server, port


def client_channel(target: str, ca: str | None = None, cert: str | None = None, key: str | None = None) -> grpc.Channel:
    """A plaintext channel, or TLS when a CA is given (plus a client certificate for mTLS)."""
    if not ca and not cert:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None)
    return grpc.secure_channel(target, creds)
