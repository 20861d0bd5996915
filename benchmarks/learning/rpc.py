"""The benchmark's gRPC calls: retries of transient failures, bearer-token metadata."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import grpc

Metadata = Sequence[tuple[str, str]] | None
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def call(method: Callable, request: Any, metadata: Metadata = None, timeout: float = 120.0,
         attempts: int = 5) -> Any:
    """Call a unary RPC, retrying transient failures (overload, a restarting server) with backoff."""
    for attempt in range(attempts):
        try:
            return method(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() not in TRANSIENT or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def bearer(token: str) -> Metadata:
    """gRPC metadata carrying `token` (None without one)."""
    return [("authorization", f"Bearer {token}")] if token else None
