"""The one device resolver (and the serving dtype) of every process: server, worker, SFT build."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The torch device for a setting: None or "auto" -> CUDA when available, else CPU; else the named
    device ("cpu", "cuda", "cuda:1")."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def serving_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it (half the memory, tensor cores), else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
