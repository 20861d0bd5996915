"""Seeded fuzzing of every RPC of a real server (used by tests/integration/test_fuzz.py and
benchmarks/faults.py): random bytes, invalid UTF-8, mutated messages and hostile field values."""

from __future__ import annotations

import collections
import random
import re
from dataclasses import dataclass, field

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor

from rlhf.v1 import admin_pb2, policy_pb2

DOCUMENTED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "ALREADY_EXISTS",
              "PERMISSION_DENIED"}
LEAK = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|Traceback|\.py\b|site-packages")
STRINGS = ["", " ", "v0001", "v9999", "v0001/", "./v0001", "../../versions/v0001", "/etc/passwd", "x" * 65,
           "y" * 300, "z" * 5000, "\u00e9\u4e2d\U0001F600", "nul\x00byte", "\n\t", "' OR 1=1 --", "%s%n{0}"]
FLOATS = [0.0, 1e-40, 1e-10, 1e-3, 0.5, 1.0, 2.0, 100.0, 100.5, -1.0, float("nan"), float("inf"), float("-inf"),
          1e308, 5e-324]


@dataclass
class Outcome:
    codes: collections.Counter = field(default_factory=collections.Counter)
    bad: list = field(default_factory=list)  # (method, case kind, code, details) not allowed

    def add(self, method: str, kind: str, code: str, details: str, registry_root: str) -> None:
        self.codes[code] += 1
        leak = LEAK.search(details or "") or (registry_root and registry_root in (details or ""))
        if code not in DOCUMENTED or leak or len(details or "") > 1100:
            self.bad.append((method, kind, code, (details or "")[:200]))


def methods() -> list[tuple[str, type, bool]]:
    """(path, request class, server-streaming) of every RPC of PolicyService and AdminService."""
    out = []
    for file, name in ((policy_pb2, "PolicyService"), (admin_pb2, "AdminService")):
        service = file.DESCRIPTOR.services_by_name[name]
        for m in service.methods:
            out.append((f"/{service.full_name}/{m.name}", message_factory.GetMessageClass(m.input_type),
                        m.server_streaming))
    return out


def _value(rng: random.Random, f: FieldDescriptor, ids: list[str], depth: int):
    if f.type == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS + ids * 3)
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(FLOATS)
    if f.type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if f.type == FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in f.enum_type.values] + [99])
    if f.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice([0, 1, 2, 8, 16, 600, 100_001, 2**32 - 1])
    if f.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice([0, 1, 8, 2**63, 2**64 - 1])
    if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return rng.choice([0, 1, -1, 8, 2**63 - 1, -2**63])
    if f.type in (FieldDescriptor.TYPE_BYTES,):
        return rng.randbytes(rng.randrange(8))
    return rng.choice([0, 1, -1, 2, 8, 16, 600, 2**31 - 1, -2**31])


def random_message(rng: random.Random, cls, ids: list[str], depth: int = 0):
    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        repeated = getattr(f, "is_repeated", None)
        repeated = repeated if repeated is not None else f.label == FieldDescriptor.LABEL_REPEATED
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < 3 and not repeated:
                sub = random_message(rng, message_factory.GetMessageClass(f.message_type), ids, depth + 1)
                getattr(msg, f.name).CopyFrom(sub)
        elif repeated:
            getattr(msg, f.name).extend(_value(rng, f, ids, depth) for _ in range(rng.choice([0, 1, 3, 9])))
        else:
            setattr(msg, f.name, _value(rng, f, ids, depth))
    if cls is policy_pb2.GenerateRequest and rng.random() < 0.7:  # keep most generations short
        msg.sampling.max_new_tokens = rng.choice([1, 4, 8])
    return msg


def bad_utf8(rng: random.Random, cls) -> bytes:
    strings = [f for f in cls.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_STRING]
    number = rng.choice(strings).number if strings else 1
    payload = rng.choice([b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
    return bytes([(number << 3) | 2, len(payload)]) + payload


def random_case(rng: random.Random, cls, ids: list[str]) -> tuple[str, bytes]:
    kind = rng.choice(["bytes", "utf8", "fields", "fields", "fields", "mutated"])
    if kind == "bytes":
        return kind, rng.randbytes(rng.randrange(0, 120))
    if kind == "utf8":
        return kind, bad_utf8(rng, cls)
    raw = random_message(rng, cls, ids).SerializeToString()
    if kind == "mutated" and raw:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        raw = bytes(data[: rng.randint(1, len(data))])
    return kind, raw


def call(channel: grpc.Channel, path: str, streaming: bool, raw: bytes, timeout: float = 20.0) -> tuple[str, str]:
    """Sends raw request bytes; returns (status code name, details)."""
    try:
        if streaming:
            for _ in channel.unary_stream(path)(raw, timeout=timeout):
                pass
        else:
            channel.unary_unary(path)(raw, timeout=timeout)
        return "OK", ""
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""


def run(channel: grpc.Channel, cases: int, seed: int, ids: list[str], registry_root: str = "") -> Outcome:
    """`cases` random requests spread over every RPC."""
    rng = random.Random(seed)
    outcome = Outcome()
    rpcs = methods()
    for i in range(cases):
        path, cls, streaming = rpcs[i % len(rpcs)]
        kind, raw = random_case(rng, cls, ids)
        code, details = call(channel, path, streaming, raw)
        outcome.add(path, kind, code, details, registry_root)
    return outcome
