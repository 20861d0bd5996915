"""The TTFT A/B's variants change the running server as they say, and each is undone after its phase."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from benchmarks.serving_ttft import VARIANTS
from service.engine import Engine
from service.metrics import Metrics


class RecordingLoop:
    """Stands in for the event loop: records the decode thread's hand-overs."""

    def __init__(self):
        self.handed = []

    def is_closed(self) -> bool:
        return False

    def call_soon_threadsafe(self, fn, outbox):
        self.handed.append(list(outbox))


def server():
    engine = Engine(Metrics())
    engine._loop = RecordingLoop()
    return SimpleNamespace(server=SimpleNamespace(engine=engine))


def state(engine) -> tuple:
    return sys.getswitchinterval(), engine.prefill_first, dict(vars(engine))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_is_undone(name):
    srv = server()
    before = state(srv.server.engine)
    apply, undo = VARIANTS[name]
    undo(apply(srv))
    assert state(srv.server.engine) == before


def test_variants_apply_what_they_name():
    srv = server()
    engine, interval = srv.server.engine, sys.getswitchinterval()
    apply, undo = VARIANTS["switch1ms"]
    old = apply(srv)
    assert sys.getswitchinterval() == pytest.approx(0.001)
    undo(old)
    assert sys.getswitchinterval() == interval
    apply, undo = VARIANTS["prefill_first"]
    old = apply(srv)
    assert engine.prefill_first is True
    undo(old)
    apply, undo = VARIANTS["flush_per_iteration"]
    old = apply(srv)
    engine._outbox.append((print, "chunk"))
    engine._flush()  # a hand-over after a prefill or a step: held back ...
    assert engine._loop.handed == []
    engine._iteration()  # ... until the iteration ends (an idle engine: nothing else to do)
    assert engine._loop.handed == [[(print, "chunk")]]
    undo(old)
    engine._outbox.append((print, "next"))
    engine._flush()  # as shipped: handed over at once
    assert engine._loop.handed[-1] == [(print, "next")]
