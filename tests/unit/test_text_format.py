"""Prompt format contract and the shipped dataset."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from training.text_format import (
    PROMPT_TEMPLATE,
    heldout_prompts,
    load_dataset,
    render_prompt,
    render_response,
    train_prompts,
)

STYLES = {"terse", "empathetic", "unhelpful", "clarifying"}


def test_render_prompt_without_chat_template() -> None:
    tok = SimpleNamespace(chat_template=None, eos_token="<|endoftext|>")
    assert PROMPT_TEMPLATE == "User: {prompt}\nAssistant:"
    assert render_prompt(tok, "Hi there?") == "User: Hi there?\nAssistant:"
    assert render_response(tok, "Hello.") == " Hello.<|endoftext|>"


def test_render_prompt_uses_chat_template() -> None:
    calls = []

    def apply_chat_template(messages, add_generation_prompt, tokenize):
        calls.append((messages, add_generation_prompt, tokenize))
        return "<user>" + messages[0]["content"] + "<assistant>"

    tok = SimpleNamespace(chat_template="{{ x }}", apply_chat_template=apply_chat_template)
    assert render_prompt(tok, "Hi") == "<user>Hi<assistant>"
    assert calls == [([{"role": "user", "content": "Hi"}], True, False)]


def test_dataset_schema_and_styles() -> None:
    rows = load_dataset()
    assert rows and all(set(r) == {"prompt", "response", "style", "topic", "split"} for r in rows)
    styles = Counter(r["style"] for r in load_dataset("train"))
    assert set(styles) == STYLES
    assert max(styles.values()) - min(styles.values()) <= 0.1 * len(load_dataset("train"))
    assert len({r["topic"] for r in rows}) >= 15
    assert all(r["split"] in ("train", "heldout") for r in rows)


def test_heldout_disjoint_and_nonempty() -> None:
    held, train = heldout_prompts(), train_prompts()
    assert held and train
    assert not set(held) & set(train)
    assert len(held) == len(set(held))
    assert 0.1 <= len(held) / (len(held) + len(train)) <= 0.3
    assert {r["prompt"] for r in load_dataset("heldout")} == set(held)
    assert "My order hasn't arrived. What should I do?" in train


def test_every_heldout_topic_is_trained() -> None:
    train_topics = {r["topic"] for r in load_dataset("train")}
    assert {r["topic"] for r in load_dataset("heldout")} <= train_topics
