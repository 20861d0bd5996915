"""Server interceptor: bearer-token auth and the go-grpc-prometheus metric families."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

import grpc

from service.metrics import Metrics

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
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
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
    async def _observed(self, labels: tuple[str, str, str], context):
        """Counts the RPC, checks its token, and records its status code and duration."""
        started = time.perf_counter()
        self.metrics.grpc_started.labels(*labels).inc()
        error = None
        try:
            await self.auth.check(labels[0], context)
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._record(labels, context, started, error)

    def _unary(self, behavior, service, method):
        labels = (service, method, "unary")

        async def wrapped(request, context):
            async with self._observed(labels, context):
                return await behavior(request, context)
        return wrapped

    def _stream(self, behavior, service, method):
        labels = (service, method, "server_stream")

        async def wrapped(request, context):
            async with self._observed(labels, context):
                async for message in behavior(request, context):
                    self.metrics.grpc_msg_sent.labels(*labels).inc()
                    yield message
        return wrapped
