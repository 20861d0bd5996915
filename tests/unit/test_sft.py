"""SFT stage with a tiny config: build, reload, generate, masking, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.sft import IGNORE_INDEX, SFTConfig, build_default_model, collate, encode_example
from training.text_format import heldout_prompts, render_prompt
from training.tokenizer import train_tokenizer

TINY = SFTConfig(seed=3, vocab_size=400, n_layer=1, n_embd=32, n_head=2, n_positions=96,
                 max_steps=4, batch_size=8, warmup_steps=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny build shared by the tests below."""
    out = tmp_path_factory.mktemp("sft") / "model"
    return out, build_default_model(out, TINY, log=lambda _: None)


def test_build_metrics(built) -> None:
    _, metrics = built
    assert metrics["steps"] == 4
    assert metrics["params"] > 0 and metrics["seconds"] > 0
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_reload_and_generate(built) -> None:
    out, _ = built
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    enc = tok(render_prompt(tok, heldout_prompts()[0]), return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    gen = model.generate(**enc, do_sample=True, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > enc["input_ids"].shape[1]
    assert isinstance(tok.decode(gen[0]), str)


def test_same_seed_same_weights(built, tmp_path: Path) -> None:
    out, _ = built
    build_default_model(tmp_path / "again", TINY, log=lambda _: None)
    a = load_file(str(out / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_response_only_loss_masks_prompt() -> None:
    tok = train_tokenizer(["User: Hi\nAssistant: Hello there."], vocab_size=300)
    prompt_ids = tok(render_prompt(tok, "Hi"), add_special_tokens=False)["input_ids"]
    ids, labels = encode_example(tok, "Hi", "Hello there.", max_len=64)
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids and labels[:n] == [IGNORE_INDEX] * n
    assert labels[n:] == ids[n:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == "User: Hi\nAssistant: Hello there." + tok.eos_token
    batch = collate([(ids, labels), (ids[:3], labels[:3])], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(ids))
    assert (batch["labels"][1, 3:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].sum() == 3


def test_batch_order_covers_each_epoch_once() -> None:
    from training.sft import batch_order

    lengths = [i % 7 for i in range(50)]
    batches = batch_order(lengths, batch_size=4, epochs=2, seed=1)
    assert batches == batch_order(lengths, batch_size=4, epochs=2, seed=1)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == sorted(list(range(50)) * 2)
    assert all(len(b) <= 4 for b in batches)
