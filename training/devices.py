"""The one device resolver, the serving dtype and the training autocast of every process: server,
worker, SFT build, PPO (full and LoRA)."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The torch device for a setting: None or "auto" -> CUDA when available, else CPU; else the named
    device ("cpu", "cuda", "cuda:1")."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def allow_cudnn_attention(allowed: bool) -> None:
    """Whether torch's scaled_dot_product_attention may pick cuDNN's kernels: a process-wide switch that
    matters on CUDA only, set once at each process's edge from `RLHF_CUDNN_ATTENTION` (off by default).
    torch 2.11 sends attention with an explicit mask (a left-padded batch: every serving step, PPO's
    rollouts) to cuDNN first on Hopper and newer GPUs, and cuDNN builds an execution plan for every shape
    it has not seen, while a decoding step's key/value length is new at every step. The other backends
    (flash, memory-efficient, math) build no per-shape plan."""
    torch.backends.cuda.enable_cudnn_sdp(allowed)


def synchronize(device: torch.device) -> None:
    """Waits for the work queued on `device` (CUDA runs asynchronously: a timer needs it done); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serving_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it (half the memory, tensor cores), else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype PPO's forwards autocast to on ``device``: bfloat16 on CUDA (where supported, the
    serving dtype), None (plain fp32) elsewhere."""
    dtype = serving_dtype(device)
    return dtype if dtype is not torch.float32 else None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for rollouts and updates on CUDA; a no-op (fp32) on CPU. Parameters, optimiser
    state and the losses' reductions stay fp32 (log-probs are taken in fp32: training/ppo.py)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
