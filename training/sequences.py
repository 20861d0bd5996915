"""Token sequences shared by the reward model and PPO: prompt/response encoding, padding, positions.

A scored sequence is ``[rendered prompt | " " + response + EOS]`` (training.text_format), left-padded
in a batch; position ids come from the attention mask so padding never shifts positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def pad_id_of(tokenizer: Any) -> int:
    """The pad token id, falling back to EOS (GPT-2 has no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompt(tokenizer: Any, prompt: str, max_len: int) -> list[int]:
    """Token ids of the rendered prompt (training.text_format), keeping its last ``max_len``."""
    from training.text_format import render_prompt

    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return list(ids[-max_len:])


def encode_response(tokenizer: Any, response: str, max_len: int) -> list[int]:
    """Token ids of ``" " + response + eos`` (text_format.render_response), EOS kept on truncation."""
    ids = tokenizer(" " + response, add_special_tokens=False)["input_ids"]
    return list(ids[: max(max_len - 1, 0)]) + [tokenizer.eos_token_id]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(B, L) ids and mask, padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids, mask


def position_ids(mask: Tensor) -> Tensor:
    """(B, L) positions counting only real tokens (left padding does not shift them)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
