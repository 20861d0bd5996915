"""Smoke version of benchmarks/serving.py on the tests' tiny model: every phase runs, nothing fails."""

from __future__ import annotations

import json

from benchmarks import serving
from benchmarks.serving_load import PROMPTS, client_prompt, request


def test_serving_benchmark_smoke(redis_url, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    small = {**serving.plan(True), "clients": [1, 4], "closed_s": 1.5, "open_s": 2.0, "naive_requests": 2}
    monkeypatch.setattr(serving, "plan", lambda quick, device: {**small, "device": device})
    out = serving.main(["--quick", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path), "--device", "cpu"])
    assert (out["device"], out["dtype"], out["plan"]["device"]) == ("cpu", "torch.float32", "cpu")
    r = out["models"]["tiny"]
    assert r["targets"]["errors"] == 0
    assert [c["clients"] for c in r["closed_loop"]] == [1, 4]
    assert all(c["requests"] > 0 and c["tokens_per_s"] > 0 for c in r["closed_loop"] + r["open_loop"])
    for c in r["closed_loop"]:  # the TTFT split: engine-side queue wait within engine-side TTFT, both measured
        assert 0.0 < c["queue_time_mean_s"] <= c["server_ttft_mean_s"] and c["ttft_mean_s"] > 0.0
        # over the same calls (ramp-up included) a client's TTFT holds the engine's: the rest is never negative
        assert c["ttft_mean_all_s"] >= c["server_ttft_mean_s"]
    assert r["naive"]["tokens_per_s"] > 0 and r["bare_loop"]["tokens_per_s"] > 0
    distinct, unshared = r["closed_16_distinct_prompts"], r["closed_16_unshared_prefill"]  # at 4 clients here
    assert distinct["prompts"] == "distinct" and distinct["clients"] == 4 and distinct["requests"] > 0
    assert unshared["prompts"] == "shared" and unshared["requests"] > 0
    uncached = r["closed_16_no_prompt_cache"]  # RLHF_PROMPT_CACHE_MB=0, the same load
    assert uncached["requests"] > 0 and uncached["errors"] == 0 and r["targets"]["speedup_vs_no_prompt_cache_at_16"] > 0
    assert uncached["prompt_cache_hit_rate"] == 0 == distinct["prompt_cache_hit_rate"]
    assert r["closed_loop"][-1]["prompt_cache_hit_rate"] > 0  # the 4 prompts come back: the cache serves them
    assert r["targets"]["prompt_cache_hit_rate_at_16"] == r["closed_loop"][-1]["prompt_cache_hit_rate"]
    plain = r["closed_16_plain_kv_cache"]  # the server with the model's own KV cache, same load
    assert plain["requests"] > 0 and plain["errors"] == 0 and r["targets"]["speedup_vs_plain_kv_cache_at_16"] > 0
    assert r["bare_loop_plain_kv_cache"]["decode_step_s"] > 0
    assert r["targets"]["bare_step_plain_kv_cache_over_growing"] > 0
    dense = r["closed_16_dense_weights"]  # RLHF_CPU_PACKED_WEIGHTS=false, and the baselines with and without
    assert dense["requests"] > 0 and dense["errors"] == 0 and r["targets"]["speedup_vs_dense_weights_at_16"] > 0
    assert r["bare_loop_dense_weights"]["decode_step_s"] > 0 and r["naive_packed_weights"]["tokens_per_s"] > 0
    assert r["targets"]["naive_packed_over_naive"] > 0 and r["targets"]["bare_step_dense_over_packed"] > 0
    assert json.loads((tmp_path / "result-quick.json").read_text())["models"]["tiny"]["targets"]
    assert (tmp_path / "result-quick.png").stat().st_size > 0


def test_ttft_ab_smoke(redis_url, tiny_model_dir, tmp_path, monkeypatch):
    import sys

    from benchmarks import serving_ttft
    monkeypatch.setenv("REDIS_URL", redis_url)
    interval = sys.getswitchinterval()
    out = serving_ttft.main(["--model-dir", str(tiny_model_dir), "--pairs", "1", "--seconds", "1", "--clients", "4",
                             "--out", str(tmp_path / "ttft.json")])
    assert sys.getswitchinterval() == interval  # each variant is undone after its phase
    assert set(out["median"]) == set(serving_ttft.VARIANTS)
    for [r] in out["runs"].values():
        assert r["errors"] == 0 and r["requests"] > 0
        assert 0.0 < r["queue_time_mean_s"] <= r["server_ttft_mean_s"]
    assert json.loads((tmp_path / "ttft.json").read_text())["clients"] == 4


def test_distinct_prompts_never_coincide_between_clients():
    """16 clients at any calls (their offsets drift) never send the same prompt at once; "shared" sends PROMPTS."""
    for offsets in ([0] * 16, list(range(16)), [3 * c % 7 for c in range(16)]):
        for call in range(12):
            sent = [client_prompt("distinct", c, call + offsets[c], 16) for c in range(16)]
            assert len(set(sent)) == 16 and not set(sent) & {None}
    assert client_prompt("shared", 5, 2, 16) is None and request(5, 8).prompt == PROMPTS[1]
    for k in range(4):  # "shared", as closed_loop numbers its calls: every client's k-th call, one prompt
        assert {request(c * 100_000 + k, 8).prompt for c in range(16)} == {PROMPTS[k]}


def test_kv_cache_benchmark_smoke(tiny_model_dir, tmp_path):
    from benchmarks import kv_cache
    out = kv_cache.main(["--model-dir", str(tiny_model_dir), "--batches", "1,4", "--tokens", "8", "--pairs", "1",
                         "--rollout-batch", "4", "--out", str(tmp_path / "kv.json")])
    assert set(out["decode_step_s"]) == {1, 4} and all(v > 0 for v in out["decode_step_speedup"].values())
    assert out["rollout_speedup"] > 0 and out["grow_columns"] > 0  # the rollouts sampled the same tokens (checked)
    assert json.loads((tmp_path / "kv.json").read_text())["tokens"] == 8
