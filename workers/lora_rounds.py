"""The LoRA branch of a round's stages (workers/rounds.py calls these when ``state.finetune == "lora"``).

A LoRA lineage is a full base version plus adapter versions on it. The round trains the parent's
adapter further (a fresh one when the parent is the base), the reward model is the base plus its
own adapter and head, the reference is the base with the adapter disabled, and the published
version is the adapter only, its manifest naming the base (``adapter_base_version``).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

from registry import Registry
from rlhf_core.settings import Settings
from workers.state import RoundState

log = logging.getLogger(__name__)


def finetune_config(settings: Settings):
    """training.lora.FinetuneConfig from the service settings."""
    from training.lora import FinetuneConfig

    targets = tuple(t.strip() for t in settings.lora_target_modules.split(",") if t.strip()) or None
    return FinetuneConfig(finetune=settings.finetune, auto_min_params=settings.lora_auto_min_params,
                          rank=settings.lora_rank, alpha=settings.lora_alpha, dropout=settings.lora_dropout,
                          target_modules=targets, gradient_checkpointing=settings.gradient_checkpointing,
                          micro_batch_size=settings.ppo.micro_batch_size or None)


def base_of(registry: Registry, version: str) -> str:
    """The full version whose weights ``version`` runs on (itself for a full version)."""
    return registry.manifest(version).adapter_base_version or version


def decide(registry: Registry, settings: Settings, parent: str, reference: str) -> dict[str, Any]:
    """``{"finetune": "lora"|"full", "base_version": ...}`` for a round on ``parent``.

    An adapter parent always continues as LoRA. A full parent goes LoRA when the setting says so
    and the reference is the parent itself (the base with the adapter disabled *is* the
    reference); a full parent that already drifted from its reference keeps full rounds.
    """
    base = base_of(registry, parent)
    if base != parent:
        return {"finetune": "lora", "base_version": base}
    n_params = count_parameters(registry.path(parent))
    mode = settings.finetune
    if mode not in ("lora", "full", "auto"):
        raise ValueError(f"RLHF_FINETUNE must be lora, full or auto, not {mode!r}")
    wants_lora = mode == "lora" or (mode == "auto" and n_params >= settings.lora_auto_min_params)
    if wants_lora and reference != parent:
        log.warning("parent %s differs from its reference %s: a LoRA reference would be wrong; full round",
                    parent, reference)
        wants_lora = False
    return {"finetune": "lora" if wants_lora else "full", "base_version": base, "base_parameters": n_params}


def count_parameters(model_dir: Path) -> int:
    """Parameters in the safetensors files of ``model_dir``, from their JSON headers (no torch import:
    ``begin`` runs under a short lock)."""
    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def _dirs(registry: Registry, state: RoundState) -> tuple[Path, Path, Path | None]:
    """(base dir, parent dir, parent adapter dir or None)."""
    base_dir, parent_dir = registry.path(state.base_version), registry.path(state.parent)
    return base_dir, parent_dir, (parent_dir if state.parent != state.base_version else None)


def train_reward(registry: Registry, settings: Settings, state: RoundState, workdir: Path, pairs: list, cfg: Any,
                 device: Any, ratings: list | None = None) -> dict:
    """Reward model = base + its own adapter (started from the parent's) + scalar head; saved to ``workdir``."""
    from training.lora import new_reward_model
    from training.devices import resolve_device
    from training.reward_model import train_reward_model
    from transformers import AutoTokenizer

    base_dir, _, parent_adapter = _dirs(registry, state)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = new_reward_model(base_dir, finetune_config(settings), tokenizer, cfg.max_len, resolve_device(device),
                             parent_adapter)
    model, metrics = train_reward_model(model, tokenizer, pairs, cfg, ratings=ratings)
    model.save(workdir / "reward_model")
    return metrics


def ppo(registry: Registry, settings: Settings, state: RoundState, workdir: Path, prompts: list[str], cfg: Any,
        log_line: Any, norm_prompts: list[str] | None = None) -> list[dict]:
    """PPO on the adapter; writes the adapter (and tokenizer) to ``workdir/policy``. ``norm_prompts``:
    the fixed prompt set of the reward normalisation (detail 6), the same as a full round's."""
    from training.lora_ppo import run_lora_ppo, save_policy_adapter
    from transformers import AutoTokenizer

    base_dir, parent_dir, _ = _dirs(registry, state)
    pv, history = run_lora_ppo(base_dir, parent_dir, workdir / "reward_model", prompts, cfg,
                               finetune_config(settings), log=log_line, norm_prompts=norm_prompts)
    save_policy_adapter(pv, workdir / "policy", AutoTokenizer.from_pretrained(base_dir))
    if history:  # adapter + value head: what the round trained (the manifest records it)
        history[-1]["trainable_parameters"] = float(sum(p.numel() for p in pv.parameters() if p.requires_grad))
    return history


def merged_policy(registry: Registry, state: RoundState, version_dir: Path, device: Any):
    """A plain causal LM for the gate's sampling: the base with ``version_dir``'s adapter merged in
    (the base itself when ``version_dir`` is the full base version)."""
    from peft import PeftModel
    from training.lora import is_adapter_dir, load_base
    from training.devices import resolve_device

    base = load_base(registry.path(state.base_version), resolve_device(device))
    if not is_adapter_dir(version_dir):
        return base
    return PeftModel.from_pretrained(base, str(version_dir)).merge_and_unload().eval()


def parent_trunk(registry: Registry, state: RoundState, device: Any):
    """Where a round's plain reward models (the judge; a full round's policy RM) start: the parent
    policy's weights, in both modes. A full parent (and a LoRA round's first parent, the base) is its
    directory; an adapter parent is its base with the adapter merged in, trainable (the judge
    fine-tunes its trunk)."""
    from training.lora import is_adapter_dir

    parent_dir = registry.path(state.parent)
    if state.finetune != "lora" or not is_adapter_dir(parent_dir):
        return parent_dir
    return merged_policy(registry, state, parent_dir, device).requires_grad_(True)


def policy_reward_model(registry: Registry, settings: Settings, state: RoundState, workdir: Path, device: Any):
    """The round's PPO reward model (the base + its reward adapter + head) on a base of its own, for
    the gate to rescore the samples with, as it does in full rounds (``policy_rm_reward``)."""
    from training.devices import resolve_device
    from training.lora import attach_policy_adapter, attach_reward, load_base
    from transformers import AutoTokenizer

    base_dir = registry.path(state.base_version)
    peft_model = attach_policy_adapter(load_base(base_dir, resolve_device(device)), finetune_config(settings),
                                       trainable=False)
    return attach_reward(peft_model, workdir / "reward_model", AutoTokenizer.from_pretrained(base_dir)).eval()
