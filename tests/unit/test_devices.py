"""The one device resolver and the serving dtype."""

from __future__ import annotations

import torch

from training.devices import resolve_device, serving_dtype


def test_auto_and_none_pick_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected


def test_a_named_device_is_taken_as_given():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # resolving does not touch the device
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_serving_dtype_is_float32_off_cuda():
    assert serving_dtype(torch.device("cpu")) is torch.float32


def test_autocast_is_a_no_op_on_cpu():
    import contextlib

    from training.devices import autocast, autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and isinstance(autocast(cpu), contextlib.nullcontext)
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(8, 4), torch.randn(3, 8)
    with autocast(cpu):
        inside = layer(x)
        assert not torch.is_autocast_enabled("cpu")
    assert inside.dtype is torch.float32 and torch.equal(inside, layer(x))  # fp32, bit for bit


def test_autocast_picks_bf16_on_a_cuda_device(monkeypatch):
    import warnings

    from training.devices import autocast, autocast_dtype

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda) is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no GPU here: torch warns that it would disable itself
        ctx = autocast(cuda)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda) is None  # a GPU without bf16 stays fp32 (no fp16 loss scaling here)


def test_cudnn_attention_is_a_process_wide_switch():
    from training.devices import allow_cudnn_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        allow_cudnn_attention(False)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        allow_cudnn_attention(True)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_servers_and_workers_keep_attention_off_cudnn_unless_told():
    """The setting (default RLHF_CUDNN_ATTENTION=false) is applied where each process starts: a server, and the
    Celery app module that every worker process imports (checked in a fresh interpreter)."""
    import os
    import subprocess
    import sys

    from rlhf_core.settings import Settings
    from service.app import Server

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        Server(Settings(device="cpu"))
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        Server(Settings(device="cpu", cudnn_attention=True))
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    code = ("import torch; torch.backends.cuda.enable_cudnn_sdp(True); import workers.celery_app; "
            "print(torch.backends.cuda.cudnn_sdp_enabled())")
    for env, expected in (({}, "False"), ({"RLHF_CUDNN_ATTENTION": "true"}, "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, **env})
        assert out.stdout.strip().splitlines()[-1] == expected


def test_synchronize_waits_on_cuda_only(monkeypatch):
    from training.devices import synchronize

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    synchronize(torch.device("cpu"))
    assert waited == []
    synchronize(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]
