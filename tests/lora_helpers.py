"""Helpers for LoRA tests: adapter directories on the tiny model and adapter versions in a registry."""

from __future__ import annotations

from pathlib import Path

import torch

from registry import Registry
from rlhf.v1 import records_pb2


def make_adapter_dir(base_dir: Path, out: Path, seed: int, scale: float = 0.5) -> Path:
    """A LoRA adapter for ``base_dir`` with random non-zero B (so it changes the outputs), saved with the tokenizer."""
    from transformers import AutoTokenizer

    from training.lora import FinetuneConfig, attach_policy_adapter, load_base

    torch.manual_seed(seed)
    model = attach_policy_adapter(load_base(base_dir, torch.device("cpu")), FinetuneConfig(finetune="lora"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(str(out))
    return out


def publish_adapter(registry: Registry, adapter_dir: Path, base: str, parent: str = "", promoted: bool = True) -> str:
    """Publish ``adapter_dir`` as a LoRA version on ``base``."""
    manifest = records_pb2.ModelManifest(parent_version=parent or base, base_model="tiny",
                                         reference_version=registry.manifest(base).reference_version,
                                         adapter_base_version=base)
    manifest.training.description = "lora test"
    manifest.training.finetune = "lora"
    manifest.promotion.promoted = promoted
    return registry.publish(adapter_dir, manifest).version
