"""`kill` of the learning benchmark unwinds like Ctrl-C, so its stack (server, Celery worker) is stopped."""

from __future__ import annotations

import os
import signal
import time

import pytest

from benchmarks.learning.__main__ import exit_on_sigterm


def test_sigterm_raises_system_exit_so_finally_blocks_and_context_managers_run():
    previous = signal.getsignal(signal.SIGTERM)
    cleaned = []
    try:
        exit_on_sigterm()
        with pytest.raises(SystemExit) as exc:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler's SystemExit interrupts it at once
            finally:
                cleaned.append(True)
        assert exc.value.code == 128 + signal.SIGTERM
        assert cleaned == [True]
    finally:
        signal.signal(signal.SIGTERM, previous)
