"""Secure by default: no open AdminService without --insecure-admin; TLS and mTLS with real
certificates (made here with the openssl CLI); the plaintext probe port."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlhf.v1 import admin_pb2, admin_pb2_grpc, policy_pb2, policy_pb2_grpc
from service.app import BackgroundServer
from service.tls import InsecureConfig
from tests.helpers import ServingStack

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(d: Path, name: str, ext: str) -> None:
    """A P-256 key and a certificate for it signed by d/ca.pem."""
    (d / f"{name}.ext").write_text(ext + "\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rlhf-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    issue(d, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    issue(d, "client", "extendedKeyUsage=clientAuth")
    return d


def creds(pki: Path, client: bool = False) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client else None)


def generate(channel: grpc.Channel) -> policy_pb2.GenerateResponse:
    return policy_pb2_grpc.PolicyServiceStub(channel).Generate(policy_pb2.GenerateRequest(
        prompt="Is this private?", sampling=policy_pb2.SamplingParams(max_new_tokens=4)), timeout=30)


def test_server_refuses_to_start_with_admin_open(settings):
    open_admin = settings.model_copy(update={"insecure_admin": False, "admin_token": ""})
    with pytest.raises(InsecureConfig, match="--insecure-admin"):
        BackgroundServer(open_admin).start()
    proc = subprocess.run([sys.executable, "-m", "rlhf_serve.cli", "serve", "--port", "0", "--metrics-port", "-1",
                           "--redis-url", settings.redis_url, "--registry", str(settings.registry),
                           "--key-prefix", settings.key_prefix],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "AdminService" in proc.stderr and "RLHF_ADMIN_TOKEN" in proc.stderr and "--insecure-admin" in proc.stderr


def test_tls_settings_must_be_complete(settings, pki):
    half = settings.model_copy(update={"tls_cert": pki / "server.pem"})
    with pytest.raises(InsecureConfig, match="RLHF_TLS_KEY"):
        BackgroundServer(half).start()


@pytest.fixture(scope="module")
def tls_stack(redis_url, tiny_model_dir, tmp_path_factory, pki):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-tls"), tiny_model_dir, admin_token="root",
                     insecure_admin=False, tls_cert=pki / "server.pem", tls_key=pki / "server.key", health_port=0)
    yield s
    s.close()


def test_tls_serves_only_tls_clients(tls_stack, pki):
    target = f"127.0.0.1:{tls_stack.server.port}"
    with grpc.secure_channel(target, creds(pki)) as channel:
        assert generate(channel).model_version == "v0001"
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:  # the admin token is still required over TLS
            admin.ListModels(admin_pb2.ListModelsRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert admin.ListModels(admin_pb2.ListModelsRequest(), timeout=10,
                                metadata=[("authorization", "Bearer root")]).models
    with grpc.insecure_channel(target) as plain, pytest.raises(grpc.RpcError) as err:
        generate(plain)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_probe_port_answers_health_in_plaintext(tls_stack):
    port = tls_stack.server.server.health_port
    assert port and port != tls_stack.server.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service="rlhf.v1.PolicyService"), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # nothing but health on the plaintext port
            generate(channel)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_cli_generate_over_tls(tls_stack, pki):
    cmd = [sys.executable, "-m", "rlhf_serve.cli", "generate", "Hello over TLS", "--max-new-tokens", "4",
           "--target", f"localhost:{tls_stack.server.port}"]
    ok = subprocess.run(cmd + ["--ca", str(pki / "ca.pem")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("[v0001 ")
    plain = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


@pytest.fixture(scope="module")
def mtls_stack(redis_url, tiny_model_dir, tmp_path_factory, pki):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-mtls"), tiny_model_dir, admin_token="root",
                     tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem")
    yield s
    s.close()


def test_mtls_requires_a_client_certificate(mtls_stack, pki):
    target = f"127.0.0.1:{mtls_stack.server.port}"
    with grpc.secure_channel(target, creds(pki, client=True)) as channel:
        assert generate(channel).model_version == "v0001"
    with grpc.secure_channel(target, creds(pki, client=False)) as channel, pytest.raises(grpc.RpcError) as err:
        generate(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    cli = subprocess.run([sys.executable, "-m", "rlhf_serve.cli", "generate", "mutual", "--max-new-tokens", "4",
                          "--target", target, "--ca", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
                          "--key", str(pki / "client.key")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.startswith("[v0001 "), cli.stderr
