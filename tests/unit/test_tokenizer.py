"""Byte-level BPE tokenizer: unicode round-trip and save/AutoTokenizer reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from training.tokenizer import EOS_TOKEN, train_tokenizer

CORPUS = ["User: My order hasn't arrived.\nAssistant: Check your tracking number."] * 5 + [
    "User: I want a refund.\nAssistant: Request it from your order history.",
]
SAMPLES = [
    "héllo wörld",
    "日本語のテキスト 🙂🚀",
    "tabs\tand\nnewlines  and   spaces ",
    "Ωμέγα — ‘quotes’ «guillemets» \u200b zero-width",
    "",
    "User: My order hasn't arrived.\nAssistant:",
]


@pytest.fixture(scope="module")
def tok():
    """A tiny tokenizer trained on a few lines."""
    return train_tokenizer(CORPUS, vocab_size=300, model_max_length=64)


@pytest.mark.parametrize("text", SAMPLES)
def test_roundtrip_arbitrary_unicode(tok, text: str) -> None:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_special_tokens(tok) -> None:
    assert tok.eos_token == tok.bos_token == tok.pad_token == EOS_TOKEN
    assert tok.eos_token_id is not None and tok.pad_token_id == tok.eos_token_id
    assert tok.model_max_length == 64
    assert len(tok) <= 300
    ids = tok("hi" + EOS_TOKEN, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id


def test_save_and_autotokenizer_reload(tok, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)  # transformers 5: TokenizersBackend, no isinstance check
    for text in SAMPLES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert again(text, add_special_tokens=False)["input_ids"] == ids
        assert again.decode(ids) == text
    assert again.eos_token_id == tok.eos_token_id and again.pad_token_id == tok.pad_token_id
