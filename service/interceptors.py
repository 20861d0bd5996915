"""Server interceptor: bearer-token auth, the go-grpc-prometheus metric families, and the error net.

Every rlhf.v1 request passes three checks before its handler runs: the token, that its bytes
decode (an undecodable or invalid-UTF-8 message is INVALID_ARGUMENT, not grpc's UNKNOWN), and the
length of every string field (service.limits). An exception no handler translated becomes
INTERNAL with a generic message and a reference id; the details go to the server log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid

import grpc

from service.errors import UNAVAILABLE_STORE, ApiError, is_store_outage
from service.limits import check_lengths
from service.metrics import Metrics

log = logging.getLogger("rlhf_serve.server")

POLICY_SERVICE = "rlhf.v1.PolicyService"
ADMIN_SERVICE = "rlhf.v1.AdminService"


def _code_name(code) -> str:
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


class Authorizer:
    """Bearer tokens: `api_tokens` guard PolicyService, `admin_token` guards AdminService."""

    def __init__(self, api_tokens: str, admin_token: str):
        self.api_tokens = [t.strip() for t in api_tokens.split(",") if t.strip()]
        self.admin_token = admin_token

    def required(self, service: str) -> list[str]:
        if service == ADMIN_SERVICE:
            return [self.admin_token] if self.admin_token else []
        if service == POLICY_SERVICE:
            return self.api_tokens
        return []  # health, reflection: open so probes work

    async def check(self, service: str, context) -> None:
        tokens = self.required(service)
        if not tokens:
            return
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not given or not any(hmac.compare_digest(given, t) for t in tokens):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"{service} needs metadata 'authorization: Bearer <token>' with a valid token")


class Undecodable:
    """Stands in for a request whose bytes did not parse (the handler answers INVALID_ARGUMENT)."""

    def __init__(self, error: Exception):
        self.error = error


def tolerant(deserializer):
    """A request deserializer that returns Undecodable instead of raising."""
    if deserializer is None:
        return None

    def parse(raw: bytes):
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, bad UTF-8, ...
            return Undecodable(exc)
    return parse


async def screen(service: str, method: str, request, context) -> None:
    """Aborts with INVALID_ARGUMENT on an undecodable request or an over-long string field."""
    if isinstance(request, Undecodable):
        log.info("%s/%s: undecodable request: %r", service, method, request.error)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid {service}/{method} message (malformed protobuf or a string "
                            "that is not UTF-8); send the message the API defines")
    if service.startswith("rlhf."):
        try:
            check_lengths(request)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)


async def abort_unexpected(exc: Exception, labels, context) -> None:
    """UNAVAILABLE for a lost Redis, otherwise INTERNAL with a reference to the logged traceback."""
    if is_store_outage(exc):
        log.warning("%s/%s: Redis unreachable: %r", labels[0], labels[1], exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_STORE)
    ref = uuid.uuid4().hex[:12]
    log.error("%s/%s failed (ref %s)", labels[0], labels[1], ref, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server logged the details. "
                                                  "Retry; report the ref if it persists")


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, authorizer: Authorizer):
        self.metrics = metrics
        self.auth = authorizer

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, service, method),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, service, method),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return handler  # client- and bidi-streaming: none in this API

    def _record(self, labels, context, started, error) -> None:
        if isinstance(error, asyncio.CancelledError):
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        elif error is not None and not isinstance(error, grpc.aio.AbortError):
            code = _code_name(context.code()) if context.code() else "UNKNOWN"
        else:
            code = _code_name(context.code())
        self.metrics.grpc_handled.labels(*labels, code).inc()
        self.metrics.grpc_seconds.labels(*labels, code).observe(time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def _observed(self, labels: tuple[str, str, str], request, context):
        """Counts the RPC, checks its token and request, records its status code and duration."""
        started = time.perf_counter()
        self.metrics.grpc_started.labels(*labels).inc()
        error = None
        try:
            await self.auth.check(labels[0], context)
            await screen(labels[0], labels[1], request, context)
            try:
                yield
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await abort_unexpected(exc, labels, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._record(labels, context, started, error)

    def _unary(self, behavior, service, method):
        labels = (service, method, "unary")

        async def wrapped(request, context):
            async with self._observed(labels, request, context):
                return await behavior(request, context)
        return wrapped

    def _stream(self, behavior, service, method):
        labels = (service, method, "server_stream")

        async def wrapped(request, context):
            async with self._observed(labels, request, context):
                async for message in behavior(request, context):
                    self.metrics.grpc_msg_sent.labels(*labels).inc()
                    yield message
        return wrapped
