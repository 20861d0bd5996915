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
