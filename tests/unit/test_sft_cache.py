"""The learning benchmark's cached SFT model is built with one torch thread, whatever the machine."""

from __future__ import annotations

import torch

from benchmarks.learning import stack


def test_the_sft_model_is_built_with_one_thread_and_cached(tmp_path, monkeypatch):
    calls = []

    def fake_build(out, cfg, log):  # records the thread count the build saw; writes what a build writes
        calls.append((cfg.seed, torch.get_num_threads()))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr("training.sft.build_default_model", fake_build)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = stack.builtin_sft_dir(3, cache=tmp_path, log=lambda *_: None)
        assert torch.get_num_threads() == 2  # restored after the build
        again = stack.builtin_sft_dir(3, cache=tmp_path, log=lambda *_: None)
    finally:
        torch.set_num_threads(before)
    assert calls == [(3, 1)]  # built once, with one thread; the second call reads the cache
    assert first == again == tmp_path / "sft-seed3" and (first / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["sft-seed3"]  # no temporary dir left behind


def test_weights_digest_tells_whether_two_runs_started_from_the_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\x00weights")
        (d / "config.json").write_text('{"name": "%s"}' % d.name)  # not weights: does not count
    assert stack.weights_digest(a) == stack.weights_digest(b)
    (b / "model.safetensors").write_bytes(b"\x01weights")
    assert stack.weights_digest(a) != stack.weights_digest(b)
