"""Length limits on every string field of every API request, checked before the request is used.

The interceptor runs `check_lengths` on each decoded rlhf.v1 request, so no handler ever sees an
over-long string and no error message can echo one at length. Fields with a tighter semantic check
elsewhere keep it (prompt against RLHF_MAX_PROMPT_CHARS, stop strings against their own limit);
this is the outer bound for all of them.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from service.errors import InvalidArgument

DEFAULT_MAX_CHARS = 256
"""Any string field not listed below (user_id, idempotency_key, ...)."""
ID_MAX_CHARS = 64
"""Identifiers the server issues (response ids are 32 hex chars, versions `v0001`)."""
FIELD_MAX_CHARS = {
    "prompt": 1_000_000,  # the real limit (RLHF_MAX_PROMPT_CHARS) is checked by the core with its own message
    "comment": 4000,
    "stop": 64,
    "response_id": ID_MAX_CHARS,
    "chosen_response_id": ID_MAX_CHARS,
    "rejected_response_id": ID_MAX_CHARS,
    "model_version": ID_MAX_CHARS,
}
ECHO_CHARS = 64
FIELD_HINTS = {"model_version": " (a version name is `v` + digits, e.g. v0001)"}
"""What a well-formed value looks like, added to the refusal of an over-long one."""


def clip(value: str, limit: int = ECHO_CHARS) -> str:
    """A client string made safe to quote in an error message: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


def check_lengths(message: Message, path: str = "") -> None:
    """Raises InvalidArgument naming the first string field over its limit (never echoing it)."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            limit = FIELD_MAX_CHARS.get(field.name, DEFAULT_MAX_CHARS)
            for item in (value if _repeated(field) else [value]):
                if len(item) > limit:
                    raise InvalidArgument(f"{name} is {len(item)} characters; the limit is {limit}"
                                          f"{FIELD_HINTS.get(field.name, '')}")
        elif field.type == FieldDescriptor.TYPE_BYTES:
            continue
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in (value if _repeated(field) else [value]):
                if isinstance(item, Message):
                    check_lengths(item, f"{name}.")


def _repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED
