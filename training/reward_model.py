"""A transformer + scalar head reward model trained with the Bradley-Terry loss."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import RewardConfig
from training.devices import resolve_device
from training.ppo import last_token_index
from training.records import PreferencePair
from training.sequences import encode_prompt, encode_response, left_pad, pad_id_of, position_ids

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted mean of -log sigmoid(r_c - r_r) (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1; detail 1)."""
    losses = -F.logsigmoid(r_chosen - r_rejected)  # (B,) -log P(chosen > rejected)
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp(min=1e-8)


class RewardModel(nn.Module):
    """Backbone transformer + linear head on the hidden state of the last non-pad token."""

    def __init__(self, backbone: nn.Module, tokenizer: Any = None, max_len: int = 128) -> None:
        super().__init__()
        if hasattr(backbone, "base_model") and backbone.base_model is not backbone:
            backbone = backbone.base_model  # a causal LM: keep its trunk, drop the LM head
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_len = max_len
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))  # detail 2
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained_backbone(cls, path: str | Path, tokenizer: Any = None, max_len: int = 128) -> "RewardModel":
        """A fresh head on the trunk of the (policy) checkpoint at ``path``."""
        from transformers import AutoModel

        return cls(AutoModel.from_pretrained(str(path)), tokenizer, max_len)

    def token_values(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) head output at every position (used as the per-token value model)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
        return self.head(out.last_hidden_state).squeeze(-1).float()  # (B, L)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) reward read at the last non-pad token of each sequence."""
        values = self.token_values(input_ids, attention_mask)  # (B, L)
        return values[torch.arange(values.shape[0]), last_token_index(attention_mask)]  # (B,)

    def encode(self, items: list[tuple[str, str]], tokenizer: Any = None) -> tuple[Tensor, Tensor]:
        """(B, L) ids and mask of (prompt, response) pairs, rendered as in SFT (detail 1)."""
        tok = tokenizer or self.tokenizer
        seqs = [encode_prompt(tok, p, self.max_len) + encode_response(tok, r, self.max_len) for p, r in items]
        ids, mask = left_pad([s[-self.max_len :] for s in seqs], pad_id_of(tok))
        device = next(self.parameters()).device
        return ids.to(device), mask.to(device)

    @torch.no_grad()
    def score(self, items: list[str] | list[tuple[str, str]], tokenizer: Any = None, batch_size: int = 16) -> Tensor:
        """(N,) CPU rewards of full texts or (prompt, response) pairs."""
        tok = tokenizer or self.tokenizer
        out = []
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            if isinstance(chunk[0], str):
                seqs = [tok(t, add_special_tokens=False)["input_ids"][-self.max_len :] for t in chunk]
                ids, mask = left_pad(seqs, pad_id_of(tok))
                device = next(self.parameters()).device
                ids, mask = ids.to(device), mask.to(device)
            else:
                ids, mask = self.encode(list(chunk), tok)
            out.append(self(ids, mask).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def save(self, path: str | Path) -> None:
        """Backbone via save_pretrained, head as safetensors, a json config, the tokenizer if any."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(path))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(path / HEAD_FILE))
        config = {"hidden_size": self.head.in_features, "max_len": self.max_len, "format": 1}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "RewardModel":
        """Inverse of :meth:`save`; the tokenizer is loaded when saved alongside."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        config = json.loads((path / CONFIG_FILE).read_text())
        has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
        tokenizer = AutoTokenizer.from_pretrained(str(path)) if has_tok else None
        model = cls(AutoModel.from_pretrained(str(path)), tokenizer, config.get("max_len", 128))
        model.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        return model.to(resolve_device(device)).eval()


def split_pairs(pairs: list[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, heldout) split by prompt, so no held-out prompt is trained on (detail 1)."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    target = round(len(pairs) * fraction) if len(prompts) > 1 else 0
    held: set[str] = set()
    count = 0
    for prompt in prompts:
        if count >= target:
            break
        held.add(prompt)
        count += sum(p.prompt == prompt for p in pairs)
    if len(held) == len(prompts):  # never hold out everything
        held.discard(prompts[-1])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def pair_rewards(model: RewardModel, batch: list[PreferencePair]) -> tuple[Tensor, Tensor, Tensor]:
    """(B,) r_chosen, (B,) r_rejected and (B,) weights, in one forward pass."""
    items = [(p.prompt, p.chosen) for p in batch] + [(p.rejected_context, p.rejected) for p in batch]
    rewards = model(*model.encode(items))  # (2B,)
    weight = torch.tensor([p.weight for p in batch], device=rewards.device, dtype=rewards.dtype)
    return rewards[: len(batch)], rewards[len(batch) :], weight


@torch.no_grad()
def evaluate_pairs(model: RewardModel, pairs: list[PreferencePair], batch_size: int) -> dict[str, float | None]:
    """Accuracy (r_c > r_r) and Bradley-Terry loss on ``pairs`` (None when empty)."""
    if not pairs:
        return {"accuracy": None, "loss": None}
    correct, losses = 0.0, []
    for i in range(0, len(pairs), batch_size):
        r_c, r_r, w = pair_rewards(model, pairs[i : i + batch_size])
        correct += float((r_c > r_r).float().sum())
        losses.append(float(bradley_terry_loss(r_c, r_r, w)) * len(r_c))
    return {"accuracy": correct / len(pairs), "loss": sum(losses) / len(pairs)}


def train_reward_model(backbone_dir_or_model: str | Path | nn.Module, tokenizer: Any,
                       pairs: list[PreferencePair], cfg: RewardConfig) -> tuple[RewardModel, dict[str, Any]]:
    """Train a reward model on ``pairs``; metrics include per-epoch train loss and held-out accuracy."""
    torch.manual_seed(cfg.seed)
    src = backbone_dir_or_model
    if isinstance(src, RewardModel):
        model = src
        model.tokenizer = model.tokenizer or tokenizer
    elif isinstance(src, nn.Module):
        model = RewardModel(src, tokenizer, cfg.max_len)
    else:
        model = RewardModel.from_pretrained_backbone(src, tokenizer, cfg.max_len)
    model.to(resolve_device(cfg.device)).eval()  # eval(): dropout off (detail 16)
    train, heldout = split_pairs(pairs, cfg.heldout_fraction, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng, history = random.Random(cfg.seed), []
    for epoch in range(cfg.epochs):
        order = list(train)
        rng.shuffle(order)
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            loss = bradley_terry_loss(*pair_rewards(model, order[i : i + cfg.batch_size]))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
        held = evaluate_pairs(model, heldout, cfg.batch_size)
        train_loss = sum(losses) / len(losses) if losses else None
        history.append({"epoch": epoch, "train_loss": train_loss, "heldout_accuracy": held["accuracy"], "heldout_loss": held["loss"]})
    train_eval = evaluate_pairs(model, train, cfg.batch_size)
    last = history[-1] if history else {"train_loss": None, "heldout_accuracy": None, "heldout_loss": None}
    metrics = {"train_loss": last["train_loss"], "train_accuracy": train_eval["accuracy"],
               "heldout_accuracy": last["heldout_accuracy"], "heldout_loss": last["heldout_loss"],
               "n_pairs": len(pairs), "n_train": len(train), "n_heldout": len(heldout), "history": history}
    return model.eval(), metrics
