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
