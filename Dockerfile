# syntax=docker/dockerfile:1
# Image of rlhf-serve: one image for the gRPC server, the Celery workers, beat and bootstrap.
#
#   docker build -t rlhf-serve:0.1.0 .                                  # CPU torch (default)
#   docker build -t rlhf-serve:0.1.0-cuda --build-arg VARIANT=cuda .    # CUDA torch (GPU workers)
#
# Both variants start from the same slim Python image: the CUDA torch wheels bring the CUDA
# runtime libraries (nvidia-* wheels) and the node's NVIDIA container runtime brings the driver.
# The entry point is the `rlhf-serve` CLI; the default command is `serve`. Override the
# command (Kubernetes `args:`) for `worker -- -Q gpu`, `beat`, `bootstrap`, `models list`, ...
#
# Reproducible: the base image is pinned (see PYTHON_IMAGE), torch by TORCH_VERSION and every
# other Python package by constraints.txt (the tested venv's `pip freeze`).
# PYTHON_IMAGE: pin the digest too where you can reach the registry:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm   # -> Digest: sha256:...
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# cpu or cuda: which torch wheel index the build installs from.
ARG VARIANT=cpu

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt pip setuptools

# torch first, from the variant's index, so `pip install .` finds it satisfied.
FROM base AS torch-cpu
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

FROM base AS torch-cuda
ARG TORCH_VERSION=2.13.0
ARG CUDA_INDEX_URL=https://download.pytorch.org/whl/cu126
RUN pip install --no-cache-dir --index-url "${CUDA_INDEX_URL}" "torch==${TORCH_VERSION}"

# hadolint ignore=DL3006
FROM torch-${VARIANT} AS build
WORKDIR /src
RUN pip install --no-cache-dir -c constraints.txt grpcio-tools
# The whole context (see .dockerignore: no .venv, var/, generated rlhf/, tests, k8s).
COPY . .
# Equivalent of `make proto`: generate the rlhf.v1 stubs, then install the project (non-editable).
RUN rm -rf rlhf && mkdir -p rlhf/v1 \
 && python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/rlhf/v1/*.proto \
 && touch rlhf/__init__.py rlhf/v1/__init__.py \
 && pip install --no-cache-dir -c constraints.txt . \
 && pip uninstall -y grpcio-tools \
 && python -c "import torch, rlhf.v1.policy_pb2_grpc, rlhf_serve.cli; print('torch', torch.__version__)"

FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="rlhf-serve" \
      org.opencontainers.image.description="gRPC policy server + Celery RLHF workers (${VARIANT} torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache \
    RLHF_HOST=0.0.0.0 \
    RLHF_PORT=50051 \
    RLHF_METRICS_PORT=9090 \
    RLHF_REGISTRY=/var/lib/rlhf/registry
# Caches (Hugging Face, torch, XDG) under /tmp: the pods' root filesystem is read-only and /tmp
# an emptyDir. Non-root user with a fixed uid/gid so a PVC's fsGroup can match it.
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
