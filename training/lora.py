"""LoRA rounds through ``peft``: one base model in memory for policy, reference, value and reward.

- policy     = base + trainable adapter ``"default"`` (peft ``get_peft_model``)
- reference  = the same base with the adapter disabled (``PeftModel.disable_adapter()``): no copy
- value      = a zero-initialised scalar head on the policy's last hidden state (one forward gives
               logits and values; detail 20's zero head)
- reward     = the same base + its own frozen adapter ``"reward"`` + a scalar head

Target modules default to the attention projections of the architecture (``c_attn`` for GPT-2,
``q_proj/k_proj/v_proj/o_proj`` for Llama/Qwen/Mistral, ``query_key_value`` for GPT-NeoX/Falcon).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from training.reward_head import scalar_head
from training.reward_model import RewardModel
from training.rollout import position_ids

POLICY_ADAPTER = "default"
REWARD_ADAPTER = "reward"
ADAPTER_CONFIG = "adapter_config.json"
REWARD_HEAD_FILE = "reward_head.safetensors"
REWARD_META_FILE = "reward_config.json"
AUTO_LORA_MIN_PARAMS = 20_000_000
"""``finetune=auto`` picks LoRA at or above this many parameters (see README, "LoRA rounds")."""

TARGETS_BY_FAMILY = (
    (("c_attn",), ["c_attn"]),  # GPT-2: fused qkv Conv1D
    (("q_proj", "v_proj"), ["q_proj", "k_proj", "v_proj", "o_proj"]),  # Llama, Qwen, Mistral, OPT
    (("query_key_value",), ["query_key_value"]),  # GPT-NeoX, Falcon, Bloom
    (("c_attn_q",), ["c_attn_q", "c_attn_k", "c_attn_v"]),
)


@dataclass
class FinetuneConfig:
    """How a round fine-tunes: all weights or a LoRA adapter (and the memory/speed knobs)."""

    finetune: str = "auto"
    """``lora`` | ``full`` | ``auto`` (LoRA at or above ``auto_min_params`` parameters)."""
    auto_min_params: int = AUTO_LORA_MIN_PARAMS
    """Parameter count from which ``auto`` picks LoRA."""
    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA alpha (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """LoRA dropout (0: PPO runs with dropout off, detail 16)."""
    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; None detects them from the architecture."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (CUDA only; saves memory, costs ~30% time)."""
    micro_batch_size: int | None = None
    """Rows per forward/backward inside a PPO mini-batch (gradient accumulation); None: the mini-batch."""

    def uses_lora(self, n_params: int) -> bool:
        """True when a model of ``n_params`` parameters is fine-tuned with LoRA."""
        if self.finetune not in ("lora", "full", "auto"):
            raise ValueError(f"finetune must be lora, full or auto, not {self.finetune!r}")
        return self.finetune == "lora" or (self.finetune == "auto" and n_params >= self.auto_min_params)


def count_parameters(model_dir: str | Path) -> int:
    """Parameter count of the HF model at ``model_dir``, read from its safetensors headers (no load)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def is_adapter_dir(path: str | Path) -> bool:
    """True for a directory holding a peft adapter (``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def detect_target_modules(model: nn.Module) -> list[str]:
    """Default LoRA targets for ``model``'s architecture (attention projections)."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for markers, targets in TARGETS_BY_FAMILY:
        if all(m in leaf_names for m in markers):
            return [t for t in targets if t in leaf_names]
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                     if isinstance(m, nn.Linear) and "lm_head" not in name and "score" not in name})
    if not linear:
        raise ValueError("no LoRA target modules found; set RLHF_LORA_TARGET_MODULES")
    return linear


def peft_config(model: nn.Module, cfg: FinetuneConfig) -> Any:
    """A peft ``LoraConfig`` for ``model`` from ``cfg``."""
    from peft import LoraConfig

    targets = list(cfg.target_modules) if cfg.target_modules else detect_target_modules(model)
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def load_base(base_dir: str | Path, device: torch.device) -> nn.Module:
    """The frozen base causal LM, eval mode (dropout off, detail 16)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).to(device).eval()
    return model.requires_grad_(False)


def attach_policy_adapter(base: nn.Module, cfg: FinetuneConfig, adapter_dir: str | Path | None = None,
                          trainable: bool = True) -> Any:
    """``base`` wrapped as a PeftModel with adapter ``"default"``: fresh (B = 0) or from ``adapter_dir``."""
    from peft import PeftModel, get_peft_model

    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    else:
        model = get_peft_model(base, peft_config(base, cfg))
        if not trainable:
            model.requires_grad_(False)
    if trainable and cfg.gradient_checkpointing and next(base.parameters()).device.type == "cuda":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model.eval()


@contextlib.contextmanager
def adapter_active(model: Any, name: str) -> Iterator[None]:
    """Run ``model`` with adapter ``name`` active (frozen), then restore the trainable policy adapter."""
    previous = model.active_adapter
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(previous, inference_mode=True)
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)


class AdapterDisabled(nn.Module):
    """The reference as a plain causal LM: ``peft_model``'s base with every adapter disabled for each
    forward (exactly the base's logits; no copy). Other users of ``peft_model`` between forwards
    (the reward adapter) see it unchanged."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


class PolicyValue(nn.Module):
    """A peft policy plus a value head on its final hidden state: one forward -> logits and V(s)."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self.model = peft_model
        hidden = peft_model.get_base_model().config.hidden_size
        device = next(peft_model.parameters()).device
        self.value_head = scalar_head(hidden, "zeros", device)  # detail 20: V starts at 0 (and draws no randoms)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 0) -> tuple[Tensor, Tensor]:
        """(B, K, V) logits of the last ``logits_to_keep`` positions (0: all L) and (B, L) values."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                         output_hidden_states=True, logits_to_keep=logits_to_keep)
        values = self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits, values.float()  # (B, L, V), (B, L)


def hidden_states(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, L, H) final hidden states of a (peft) causal LM."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                output_hidden_states=True, logits_to_keep=1)  # the LM head is not needed: one position
    return out.hidden_states[-1]


class AdapterRewardModel(RewardModel):
    """r(x, y) = head(h_last) where h comes from the base with the ``"reward"`` adapter active.

    Shares the base with the policy when built from the policy's PeftModel (PPO), or owns a
    base of its own (reward-model training).
    """

    def __init__(self, peft_model: Any, head: nn.Linear, tokenizer: Any = None, max_len: int = 128) -> None:
        nn.Module.__init__(self)  # not RewardModel.__init__: no backbone of its own
        self.peft_model = peft_model
        self.head = head
        self.tokenizer = tokenizer
        self.max_len = max_len

    def token_values(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) head output at every position."""
        with adapter_active(self.peft_model, REWARD_ADAPTER):
            h = hidden_states(self.peft_model, input_ids, attention_mask)
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()

    def save(self, path: str | Path) -> None:
        """The reward adapter (peft layout), the head and a json config."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.peft_model.save_pretrained(str(path), selected_adapters=[REWARD_ADAPTER])
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(path / REWARD_HEAD_FILE))
        meta = {"hidden_size": self.head.in_features, "max_len": self.max_len, "format": "lora"}
        (path / REWARD_META_FILE).write_text(json.dumps(meta, indent=2))


def reward_adapter_dir(path: str | Path) -> Path:
    """Where peft saved the reward adapter (a subfolder for a non-default adapter name)."""
    path = Path(path)
    return path / REWARD_ADAPTER if (path / REWARD_ADAPTER / ADAPTER_CONFIG).is_file() else path


def is_lora_reward_model(path: str | Path) -> bool:
    """True when ``path`` holds a reward model saved by :meth:`AdapterRewardModel.save`."""
    meta = Path(path) / REWARD_META_FILE
    return meta.is_file() and json.loads(meta.read_text()).get("format") == "lora"


def new_reward_model(base_dir: str | Path, cfg: FinetuneConfig, tokenizer: Any, max_len: int,
                     device: torch.device, parent_adapter: str | Path | None = None) -> AdapterRewardModel:
    """A trainable reward adapter + scalar head on a fresh base (the trunk is the parent policy).

    The reward adapter starts from the parent's policy adapter when there is one (so the RM trunk
    is the parent policy, as in the full mode), else from B = 0 (the base).
    """
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    base = load_base(base_dir, device)
    model = get_peft_model(base, peft_config(base, cfg), adapter_name=REWARD_ADAPTER)
    if parent_adapter is not None:
        weights = load_file(str(Path(parent_adapter) / "adapter_model.safetensors"), device=str(device))
        set_peft_model_state_dict(model, weights, adapter_name=REWARD_ADAPTER)
    head = scalar_head(base.config.hidden_size, "normal", device)  # detail 2
    return AdapterRewardModel(model.eval(), head, tokenizer, max_len)


def attach_reward(peft_model: Any, path: str | Path, tokenizer: Any = None) -> AdapterRewardModel:
    """Load a saved reward adapter into ``peft_model`` (frozen, same base) with its head."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / REWARD_META_FILE).read_text())
    if REWARD_ADAPTER not in peft_model.peft_config:
        peft_model.load_adapter(str(reward_adapter_dir(path)), adapter_name=REWARD_ADAPTER, is_trainable=False)
    device = next(peft_model.parameters()).device
    head = nn.Linear(meta["hidden_size"], 1).to(device)
    head.load_state_dict(load_file(str(path / REWARD_HEAD_FILE), device=str(device)))
    head.requires_grad_(False)
    return AdapterRewardModel(peft_model, head, tokenizer, meta.get("max_len", 128))
