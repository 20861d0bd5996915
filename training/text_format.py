"""The prompt format contract shared by SFT, PPO and serving, plus dataset access.

A prompt is rendered with :func:`render_prompt`; the model's response follows
it as ``" " + response + eos_token`` (:func:`render_response`).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

PROMPT_TEMPLATE = "User: {prompt}\nAssistant:"
DATASET_FILE = "support_sft.jsonl"
SPLITS = ("train", "heldout")


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """Render a user prompt as the text the model continues.

    Uses the tokenizer's chat template when it has one, else ``PROMPT_TEMPLATE``.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return PROMPT_TEMPLATE.format(prompt=prompt)


def render_response(tokenizer: Any, response: str) -> str:
    """Render a response as trained: a leading space, the text, then EOS."""
    return " " + response + tokenizer.eos_token


def load_dataset(split: str | None = None) -> list[dict[str, str]]:
    """Rows of the shipped JSONL dataset, optionally only one ``split``.

    Each row has keys ``prompt``, ``response``, ``style``, ``topic``, ``split``.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = resources.files(__package__ or "training").joinpath("data", DATASET_FILE)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def _unique_prompts(rows: list[dict[str, str]]) -> list[str]:
    """Prompt strings in first-seen order, without duplicates."""
    return list(dict.fromkeys(r["prompt"] for r in rows))


def train_prompts() -> list[str]:
    """Unique prompts of the training split."""
    return _unique_prompts(load_dataset("train"))


def heldout_prompts() -> list[str]:
    """Unique prompts of the held-out split (never used for training)."""
    return _unique_prompts(load_dataset("heldout"))
