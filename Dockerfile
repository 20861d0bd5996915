# syntax=docker/dockerfile:1
# Image of rlhf-serve: one image for the gRPC server, the Celery workers, beat and bootstrap.
#
#   docker build -t rlhf-serve:0.1.0 .                                   # CPU torch (default)
#   docker build -t rlhf-serve:0.1.0-cu124 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .  # CUDA torch
#
# The entry point is the `rlhf-serve` CLI; the default command is `serve`. Override the
# command (Kubernetes `args:`) for `worker -- -Q gpu`, `beat`, `bootstrap`, `models list`, ...
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Which torch wheel index to use: .../whl/cpu (default) or a CUDA one, e.g. .../whl/cu124.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty: the newest torch on that index that satisfies pyproject's range; or pin, e.g. "==2.6.0".
ARG TORCH_VERSION=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the chosen index, so `pip install .` finds it satisfied and fetches nothing big.
RUN pip install --upgrade pip \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch${TORCH_VERSION}" \
 && pip install "grpcio-tools>=1.70"
WORKDIR /src
# The whole context (see .dockerignore: no .venv, var/, generated rlhf/, tests, k8s).
COPY . .
# Equivalent of `make proto`: generate the rlhf.v1 stubs, then install the project (non-editable).
RUN rm -rf rlhf && mkdir -p rlhf/v1 \
 && python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/rlhf/v1/*.proto \
 && touch rlhf/__init__.py rlhf/v1/__init__.py \
 && pip install . \
 && pip uninstall -y grpcio-tools \
 && python -c "import rlhf.v1.policy_pb2_grpc, rlhf_serve.cli"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rlhf-serve" \
      org.opencontainers.image.description="gRPC policy server + Celery RLHF workers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf \
    RLHF_HOST=0.0.0.0 \
    RLHF_PORT=50051 \
    RLHF_METRICS_PORT=9090 \
    RLHF_REGISTRY=/var/lib/rlhf/registry
# Non-root user with a fixed uid/gid so a PVC's fsGroup can match it.
RUN groupadd --system --gid 10001 rlhf \
 && useradd --system --uid 10001 --gid rlhf --home-dir /home/rlhf --create-home --shell /usr/sbin/nologin rlhf \
 && mkdir -p /var/lib/rlhf/registry \
 && chown -R rlhf:rlhf /var/lib/rlhf
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/rlhf
EXPOSE 50051 9090
ENTRYPOINT ["rlhf-serve"]
CMD ["serve"]
