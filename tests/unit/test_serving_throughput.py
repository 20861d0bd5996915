"""The serving benchmark's throughput counts the tokens delivered inside its window, not only the
tokens of calls that ended inside it (lockstep cycles straddling the window's end were dropped)."""

from __future__ import annotations

from benchmarks.serving_load import summarise


def _call(start: float, every: float, tokens: int, error: str | None = None) -> dict:
    arrivals = [start + every * (i + 1) for i in range(tokens)]  # one text chunk per token
    end = arrivals[-1]
    return {"start": start, "end": end, "ttft": every, "latency": end - start, "tokens": tokens, "error": error,
            "max_new": tokens, "arrivals": arrivals}


def test_a_cycle_cut_by_the_window_counts_what_was_delivered_inside_it():
    # two clients in lockstep, 10 tokens per call at 1 token/s: calls end at 10, 20, 30
    results = [_call(t0, 1.0, 10) for t0 in (0.0, 10.0, 20.0) for _ in range(2)]
    out = summarise(results, (0.0, 25.0))
    # 2 calls x 10 tokens by t=20, then 2 x 5 tokens of the calls still running: 50 tokens in 25 s
    assert out["tokens_per_s"] == 50 / 25.0
    assert out["requests_per_s"] == 4 / 25.0  # calls that ended in the window


def test_a_call_without_text_counts_its_tokens_when_it_ends():
    empty = {**_call(0.0, 1.0, 4), "arrivals": []}  # e.g. only whitespace or an immediate EOS
    assert summarise([empty], (0.0, 3.0))["tokens_per_s"] == 0.0
    assert summarise([empty], (0.0, 4.0))["tokens_per_s"] == 1.0


def test_failed_calls_deliver_no_counted_tokens():
    results = [_call(0.0, 1.0, 10), _call(0.0, 1.0, 10, error="UNAVAILABLE")]
    out = summarise(results, (0.0, 10.0))
    assert out["tokens_per_s"] == 1.0 and out["errors"] == 1
