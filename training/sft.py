"""SFT stage: build the built-in default policy from the shipped dataset.

``python -m training.sft OUT_DIR`` trains a byte-level BPE tokenizer and a
small GPT-2 on the train split (loss on response tokens only) and saves a
standard Hugging Face directory loadable with ``AutoModelForCausalLM`` /
``AutoTokenizer``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from training.devices import resolve_device
from training.text_format import load_dataset, render_prompt, render_response
from training.tokenizer import train_tokenizer

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SFTConfig:
    """Hyper-parameters of the SFT stage (defaults build the shipped model)."""

    seed: int = 0
    """Seed for torch / python RNGs: same seed, same machine -> same weights."""
    vocab_size: int = 2048
    """Upper bound on the BPE vocabulary (the small corpus may yield fewer)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_embd: int = 128
    """Hidden size."""
    n_head: int = 4
    """Attention heads (must divide ``n_embd``)."""
    n_positions: int = 256
    """Maximum sequence length (prompt + response); also the tokenizer's model_max_length."""
    dropout: float = 0.0
    """Dropout for residual, embedding and attention (0 keeps SFT deterministic and simple)."""
    epochs: int = 24
    """Passes over the train split."""
    max_steps: int | None = None
    """If set, stop after this many optimizer steps (overrides ``epochs``)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold."""


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed RNGs and enable deterministic algorithms, restoring the flag after."""
    was_on = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on)


def encode_example(tokenizer: Any, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one (prompt, response); prompt labels are masked.

    The response is rendered as ``" " + response + eos``; the EOS id is appended
    explicitly so it never depends on special-token parsing.
    """
    p_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token
    body = render_response(tokenizer, response)[: -len(eos)]
    r_ids = tokenizer(body, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + r_ids)[:max_len]
    labels = ([IGNORE_INDEX] * len(p_ids) + r_ids)[:max_len]
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into tensors: input_ids, attention_mask, labels (all (B, T))."""
    t = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), t), pad_id, dtype=torch.long)  # (B, T) token ids
    labels = torch.full((len(batch), t), IGNORE_INDEX, dtype=torch.long)  # (B, T) targets / -100
    attention_mask = torch.zeros((len(batch), t), dtype=torch.long)  # (B, T) 1 = real token
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def lr_at(step: int, total: int, cfg: SFTConfig) -> float:
    """Learning rate at ``step``: linear warm-up then cosine decay to 10% of peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def batch_order(lengths: list[int], batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Deterministic shuffled mini-batches of example indices, epoch after epoch.

    Each epoch is shuffled, then windows of ``8 * batch_size`` examples are
    sorted by length before batching (less padding); batch order is shuffled.
    """
    gen = torch.Generator().manual_seed(seed)
    n, window = len(lengths), 8 * batch_size
    out: list[list[int]] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).tolist()
        batches: list[list[int]] = []
        for w in range(0, n, window):
            chunk = sorted(perm[w : w + window], key=lambda i: lengths[i])
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        out += [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]
    return out


def sft_finetune(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], cfg: SFTConfig, log: Callable[[str], Any] = print
) -> dict[str, float]:
    """Fine-tune ``model`` in place on ``rows`` with loss on response tokens only.

    Returns ``{"train_loss": mean loss of the last epoch's worth of steps, "steps": ...}``.
    """
    device = next(model.parameters()).device
    examples = [encode_example(tokenizer, r["prompt"], r["response"], cfg.n_positions) for r in rows]
    batches = batch_order([len(ids) for ids, _ in examples], cfg.batch_size, cfg.epochs, cfg.seed)
    if cfg.max_steps is not None:
        batches = batches[: cfg.max_steps]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = max(1, math.ceil(len(examples) / cfg.batch_size))
    model.train()
    losses: list[float] = []
    for step, idx in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, len(batches), cfg)
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tokenizer.pad_token_id).items()}
        loss = model(**batch).loss  # mean over unmasked response tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % per_epoch == 0 or step + 1 == len(batches):
            log(f"sft step {step + 1}/{len(batches)} loss {sum(losses[-per_epoch:]) / len(losses[-per_epoch:]):.4f}")
    model.eval()
    tail = losses[-per_epoch:] or [float("nan")]
    return {"train_loss": sum(tail) / len(tail), "steps": len(batches)}


def build_model(tokenizer: Any, cfg: SFTConfig) -> GPT2LMHeadModel:
    """A freshly initialised small GPT-2 matching ``tokenizer`` (tied embeddings)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tokenizer_corpus(rows: list[dict[str, str]]) -> list[str]:
    """Texts for tokenizer training: the prompt template and every prompt/response."""
    return [f"User: {r['prompt']}\nAssistant: {r['response']}" for r in rows]


def build_default_model(out_dir: Path, cfg: SFTConfig = SFTConfig(), log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train tokenizer + small GPT-2 on the train split and save both to ``out_dir``.

    Returns metrics ``{"train_loss", "steps", "seconds", "params"}``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    rows = load_dataset("train")  # held-out prompts are never trained on
    with deterministic(cfg.seed):
        tokenizer = train_tokenizer(tokenizer_corpus(rows), cfg.vocab_size, model_max_length=cfg.n_positions)
        model = build_model(tokenizer, cfg).to(resolve_device())
        params = sum(p.numel() for p in model.parameters())
        log(f"sft: {len(rows)} rows, vocab {len(tokenizer)}, {params} params, config {asdict(cfg)}")
        metrics = sft_finetune(model, tokenizer, rows, cfg, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics.update(seconds=time.perf_counter() - start, params=params)
    log(f"sft: saved to {out_dir}: {metrics}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m training.sft OUT_DIR [--seed N] [--epochs N]``."""
    parser = argparse.ArgumentParser(description="Build the built-in default model (SFT stage).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=SFTConfig.seed)
    parser.add_argument("--epochs", type=int, default=SFTConfig.epochs)
    args = parser.parse_args(argv)
    build_default_model(args.out_dir, SFTConfig(seed=args.seed, epochs=args.epochs))


if __name__ == "__main__":
    main()
