"""Errors the core raises; the gRPC edge turns each into its status code and message."""

from __future__ import annotations

import grpc


MAX_MESSAGE_CHARS = 1000


class ApiError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class RateLimited(ResourceExhausted):
    """RESOURCE_EXHAUSTED with a retry hint, also sent as trailing metadata `retry-after-ms`."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms
        self.trailing_metadata = (("retry-after-ms", str(retry_after_ms)),)


UNAVAILABLE_STORE = "the feedback store (Redis) is unreachable; retry with backoff"


def is_store_outage(exc: BaseException) -> bool:
    """A lost or timed-out Redis connection (transient: the client may retry)."""
    import redis
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            ConnectionError, TimeoutError))
