"""A scalar reward / value model: a transformer trunk and one linear head (pure: no tokenizer, no files).

    ids, mask (B, L) -> trunk -> hidden (B, L, H) -> head -> values (B, L) -> at the last real token -> (B,)

The reward model (training/reward_model.py: tokenising, saving, loading, training) and PPO's value
model (training/ppo_trainer.py) are both this module; they differ only in how the head starts
(:class:`ScalarHeadConfig`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.ppo import last_token_index
from training.sequences import position_ids


@dataclass(frozen=True)
class ScalarHeadConfig:
    """How the scalar head starts (its width is the trunk's hidden size)."""

    init: str = "normal"
    """"normal": N(0, 1 / (H + 1)) weights, zero bias (a reward head, detail 2); "zeros": V(s) = 0 at
    the start (a value head, detail 20)."""


def scalar_head(hidden_size: int, init: str = "normal", device: torch.device | str | None = None) -> nn.Linear:
    """A (H -> 1) linear head on `device`, initialised as `init` says (see ScalarHeadConfig)."""
    if init == "zeros":  # no random draws: a value head leaves the RNG stream where it was
        head = nn.utils.skip_init(nn.Linear, hidden_size, 1, device=device or "cpu")
        nn.init.zeros_(head.weight)
    elif init == "normal":
        head = nn.Linear(hidden_size, 1)
        head = head if device is None else head.to(device)
        nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden_size + 1))  # detail 2
    else:
        raise ValueError(f"unknown head init {init!r} (normal | zeros)")
    nn.init.zeros_(head.bias)
    return head


def trunk_of(model: nn.Module) -> nn.Module:
    """The transformer trunk of a Hugging Face model: a causal LM's base model, without its LM head."""
    if hasattr(model, "base_model") and model.base_model is not model:
        return model.base_model
    return model


class ScalarHeadModel(nn.Module):
    """Trunk + scalar head: a value at every position, the reward at the last real token."""

    def __init__(self, backbone: nn.Module, config: ScalarHeadConfig = ScalarHeadConfig()) -> None:
        super().__init__()
        self.backbone = trunk_of(backbone)
        self.head = scalar_head(self.backbone.config.hidden_size, config.init)

    def token_values(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) head output at every position (PPO's value model reads it per token)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
        return self.head(out.last_hidden_state).squeeze(-1).float()  # (B, L)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) value read at the last non-pad token of each sequence (the reward r(x, y))."""
        values = self.token_values(input_ids, attention_mask)  # (B, L)
        return values[torch.arange(values.shape[0]), last_token_index(attention_mask)]  # (B,)


def value_model_from(reward_model: ScalarHeadModel) -> ScalarHeadModel:
    """V(s_t): a copy of the reward model's trunk (Ouyang et al. 2022 App. C.4) with a zero head
    (detail 20) on the trunk's device; trainable, dropout off."""
    value = ScalarHeadModel(copy.deepcopy(reward_model.backbone), ScalarHeadConfig(init="zeros"))
    value.head.to(next(value.backbone.parameters()).device)
    return value.eval().requires_grad_(True)
