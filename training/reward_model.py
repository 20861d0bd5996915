"""The reward model: trained with the Bradley-Terry loss on comparisons and a pointwise logistic loss
on thumbs ratings (both on the same scalar reward r(x, y)); its tokenising and files.

The model itself (trunk + scalar head) is training/reward_head.py; `RewardModel` adds the tokenizer,
the encoding of (prompt, response) pairs, the rating bias and save/load (a saved directory: the
trunk via save_pretrained, reward_head.safetensors, reward_config.json, the tokenizer)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import RewardConfig
from training.devices import resolve_device
from training.records import PreferencePair, Rating, pairs_from_ratings, split_by_prompt
from training.reward_head import ScalarHeadConfig, ScalarHeadModel
from training.sequences import encode_prompt, encode_response, left_pad, pad_id_of

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"


def weighted_mean(losses: Tensor, weight: Tensor | None = None) -> Tensor:
    """sum_i w_i l_i / sum_i w_i (the plain mean when ``weight`` is None)."""
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp(min=1e-8)


def bradley_terry_losses(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """(B,) -log sigmoid(r_c - r_r) = -log P(chosen > rejected) (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1)."""
    margin = r_chosen - r_rejected  # (B,) r(x, y_c) - r(x', y_r)
    return -F.logsigmoid(margin)  # (B,)


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted mean of -log sigmoid(r_c - r_r) (detail 1)."""
    return weighted_mean(bradley_terry_losses(r_chosen, r_rejected), weight)


def pointwise_logistic_losses(reward: Tensor, thumbs_up: Tensor, bias: Tensor) -> Tensor:
    """(N,) -log P(label | x, y) with P(up | x, y) = sigmoid(r(x, y) - b): a thumbs rating as a binary label.

    ``b`` (a learned scalar) is the reward of a response users are as likely to rate up as down;
    the loss moves r of an up-rated response above b and of a down-rated one below it, so unpaired
    ratings train the same scalar reward as comparisons do.
    """
    logits = reward - bias  # (N,) log-odds of a thumbs-up
    labels = thumbs_up.to(logits.dtype)  # (N,) 1 = up, 0 = down
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (N,)


def joint_reward_loss(pair_losses: Tensor, pair_weight: Tensor, rating_losses: Tensor, rating_weight: Tensor,
                      rating_loss_weight: float = 1.0) -> Tensor:
    """(sum_i w_i l_BT,i + lambda sum_j w_j l_pt,j) / (sum_i w_i + sum_j w_j) over a batch's pairs i and ratings j."""
    pair_sum = (pair_losses * pair_weight).sum()  # () weighted Bradley-Terry losses
    rating_sum = (rating_losses * rating_weight).sum()  # () weighted pointwise losses
    total_weight = (pair_weight.sum() + rating_weight.sum()).clamp(min=1e-8)  # ()
    return (pair_sum + rating_loss_weight * rating_sum) / total_weight


def binary_auc(scores: Tensor, labels: Tensor) -> float | None:
    """P(score of a random positive > score of a random negative), ties half (Mann-Whitney U);
    None when either class is empty."""
    positive = scores[labels.bool()]  # (P,)
    negative = scores[~labels.bool()]  # (Q,)
    if positive.numel() == 0 or negative.numel() == 0:
        return None
    diff = positive[:, None] - negative[None, :]  # (P, Q)
    wins = (diff > 0).float() + 0.5 * (diff == 0).float()  # (P, Q)
    return float(wins.mean())


class RewardModel(ScalarHeadModel):
    """The reward model of a round: the pure trunk + scalar head (training/reward_head.py) with its
    tokenizer, the encoding of (prompt, response) pairs, the rating bias and its files."""

    def __init__(self, backbone: nn.Module, tokenizer: Any = None, max_len: int = 128) -> None:
        super().__init__(backbone, ScalarHeadConfig(init="normal"))
        self.tokenizer = tokenizer
        self.max_len = max_len
        """Tokens a scored sequence keeps (its last `max_len`)."""
        self.rating_bias = 0.0
        """b of the pointwise rating loss: P(thumbs up) = sigmoid(r - b)."""

    @classmethod
    def from_pretrained_backbone(cls, path: str | Path | nn.Module, tokenizer: Any = None,
                                 max_len: int = 128) -> "RewardModel":
        """A fresh head on the trunk of the (policy) checkpoint at ``path``, or of a loaded model."""
        from transformers import AutoModel

        return cls(path if isinstance(path, nn.Module) else AutoModel.from_pretrained(str(path)), tokenizer, max_len)

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
        config = {"hidden_size": self.head.in_features, "max_len": self.max_len, "format": 1,
                  "rating_bias": self.rating_bias}
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
        model.rating_bias = float(config.get("rating_bias", 0.0))
        return model.to(resolve_device(device)).eval()


def split_pairs(pairs: list[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, heldout) split by prompt, so no held-out prompt is trained on (detail 1)."""
    train, _, held, _ = split_by_prompt(pairs, [], fraction, seed)
    return train, held


def batch_rewards(model: RewardModel, pairs: list[PreferencePair], ratings: list[Rating]) -> tuple[Tensor, Tensor, Tensor]:
    """(P,) r_chosen, (P,) r_rejected and (R,) r of the rated responses, in one forward pass."""
    items = ([(p.prompt, p.chosen) for p in pairs] + [(p.rejected_context, p.rejected) for p in pairs]
             + [(r.prompt, r.response) for r in ratings])
    n = len(pairs)
    if not items:
        empty = torch.zeros(0, device=next(model.parameters()).device)
        return empty, empty, empty
    rewards = model(*model.encode(items))  # (2P + R,)
    return rewards[:n], rewards[n : 2 * n], rewards[2 * n :]


def pair_rewards(model: RewardModel, batch: list[PreferencePair]) -> tuple[Tensor, Tensor, Tensor]:
    """(B,) r_chosen, (B,) r_rejected and (B,) weights, in one forward pass."""
    r_c, r_r, _ = batch_rewards(model, batch, [])
    return r_c, r_r, _weights(batch, r_c)


def _weights(items: list[PreferencePair] | list[Rating], like: Tensor) -> Tensor:
    return torch.tensor([x.weight for x in items], device=like.device, dtype=like.dtype)


def batch_loss(model: RewardModel, bias: Tensor, pairs: list[PreferencePair], ratings: list[Rating],
               rating_loss_weight: float) -> Tensor:
    """:func:`joint_reward_loss` of one mixed batch of comparisons and ratings."""
    r_c, r_r, r_rated = batch_rewards(model, pairs, ratings)
    ups = torch.tensor([r.thumbs_up for r in ratings], device=r_rated.device)  # (R,)
    return joint_reward_loss(bradley_terry_losses(r_c, r_r), _weights(pairs, r_c),
                             pointwise_logistic_losses(r_rated, ups, bias), _weights(ratings, r_rated),
                             rating_loss_weight)


@torch.no_grad()
def evaluate_pairs(model: RewardModel, pairs: list[PreferencePair], batch_size: int) -> dict[str, float | None]:
    """Accuracy (r_c > r_r) and Bradley-Terry loss on ``pairs`` (None when empty)."""
    if not pairs:
        return {"accuracy": None, "loss": None}
    correct, total, losses = 0.0, 0.0, []
    for i in range(0, len(pairs), batch_size):
        r_c, r_r, w = pair_rewards(model, pairs[i : i + batch_size])
        correct += float(((r_c > r_r).float() * w).sum())  # a down-weighted voter's label counts less
        total += float(w.sum())
        losses.append(float(bradley_terry_loss(r_c, r_r, w)) * len(r_c))
    return {"accuracy": correct / total if total > 0 else None, "loss": sum(losses) / len(pairs)}


def balanced_accuracy(predicted_up: Tensor, thumbs_up: Tensor, weight: Tensor | None = None) -> float:
    """Mean of the (weighted) accuracy on up-rated and on down-rated items (0.5 = chance whatever the
    base rate); plain accuracy when only one class is present."""
    w = torch.ones(thumbs_up.shape, dtype=torch.float) if weight is None else weight.float().cpu()  # (R,)
    per_class = [float(weighted_mean((predicted_up[thumbs_up == c] == c).float(), w[thumbs_up == c]))
                 for c in (True, False) if bool((thumbs_up == c).any())]
    return sum(per_class) / len(per_class)


@torch.no_grad()
def evaluate_ratings(model: RewardModel, ratings: list[Rating], bias: float, batch_size: int) -> dict[str, float | None]:
    """Accuracy ((r > b) == thumbs_up), balanced accuracy, AUC of r and pointwise loss on ``ratings``
    (None when empty)."""
    if not ratings:
        return {"accuracy": None, "balanced_accuracy": None, "auc": None, "loss": None}
    rewards = torch.cat([batch_rewards(model, [], ratings[i : i + batch_size])[2].cpu()
                         for i in range(0, len(ratings), batch_size)])  # (R,)
    ups = torch.tensor([r.thumbs_up for r in ratings])  # (R,)
    predicted = rewards > bias  # (R,)
    losses = pointwise_logistic_losses(rewards, ups, torch.tensor(bias))  # (R,)
    w = torch.tensor([r.weight for r in ratings], dtype=torch.float)  # (R,) voter weights
    return {"accuracy": float(weighted_mean((predicted == ups).float(), w)),
            "balanced_accuracy": balanced_accuracy(predicted, ups, w),
            "auc": binary_auc(rewards, ups), "loss": float(weighted_mean(losses, _weights(ratings, losses)))}


def combined(a: float | None, n_a: int, b: float | None, n_b: int) -> float | None:
    """Count-weighted mean of two figures, either of which may be missing (None)."""
    parts = [(v, n) for v, n in ((a, n_a), (b, n_b)) if v is not None and n > 0]
    return sum(v * n for v, n in parts) / sum(n for _, n in parts) if parts else None


def evaluate_all(model: RewardModel, pairs: list[PreferencePair], ratings: list[Rating], bias: float,
                 batch_size: int) -> dict[str, float | None]:
    """Pair figures, rating figures and their count-weighted combination (``accuracy``: pair accuracy
    and the ratings' balanced accuracy, so that 0.5 is chance for both; ``loss``)."""
    p = evaluate_pairs(model, pairs, batch_size)
    r = evaluate_ratings(model, ratings, bias, batch_size)
    return {"pair_accuracy": p["accuracy"], "pair_loss": p["loss"], "rating_accuracy": r["accuracy"],
            "rating_balanced_accuracy": r["balanced_accuracy"], "rating_auc": r["auc"], "rating_loss": r["loss"],
            "accuracy": combined(p["accuracy"], len(pairs), r["balanced_accuracy"], len(ratings)),
            "loss": combined(p["loss"], len(pairs), r["loss"], len(ratings))}


def _as_reward_model(src: str | Path | nn.Module, tokenizer: Any, cfg: RewardConfig) -> RewardModel:
    if isinstance(src, RewardModel):
        src.tokenizer = src.tokenizer or tokenizer
        return src
    return RewardModel.from_pretrained_backbone(src, tokenizer, cfg.max_len)


def train_reward_model(backbone_dir_or_model: str | Path | nn.Module, tokenizer: Any,
                       pairs: list[PreferencePair], cfg: RewardConfig,
                       ratings: list[Rating] | None = None) -> tuple[RewardModel, dict[str, Any]]:
    """Train a reward model on comparisons ``pairs`` (Bradley-Terry) and thumbs ``ratings``
    (pointwise logistic), jointly; both are split by prompt first and nothing of a held-out
    prompt is trained on. Metrics: train loss, held-out pair accuracy, held-out rating
    accuracy and AUC, and their count-weighted ``heldout_accuracy``, per epoch in ``history``."""
    torch.manual_seed(cfg.seed)
    model = _as_reward_model(backbone_dir_or_model, tokenizer, cfg)
    device = resolve_device(cfg.device)
    model.to(device).eval()  # eval(): dropout off (detail 16)
    ratings = list(ratings or [])
    train, train_ratings, heldout, held_ratings = split_by_prompt(pairs, ratings, cfg.heldout_fraction, cfg.seed)
    if cfg.rating_pairs:  # ratings also as pairs, built from the training prompts' ratings only
        train = train + pairs_from_ratings(train_ratings, cfg.rating_pair_weight)
    bias = nn.Parameter(torch.zeros((), device=device))  # () b of P(up) = sigmoid(r - b)
    opt = torch.optim.AdamW([*model.parameters(), bias], lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng, history = random.Random(cfg.seed), []
    items: list[PreferencePair | Rating] = [*train, *train_ratings]
    for epoch in range(cfg.epochs):
        rng.shuffle(items)
        losses = []
        for i in range(0, len(items), cfg.batch_size):
            chunk = items[i : i + cfg.batch_size]
            batch_p = [x for x in chunk if isinstance(x, PreferencePair)]
            batch_r = [x for x in chunk if isinstance(x, Rating)]
            loss = batch_loss(model, bias, batch_p, batch_r, cfg.rating_loss_weight)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([*model.parameters(), bias], cfg.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
        held = evaluate_all(model, heldout, held_ratings, float(bias.detach()), cfg.batch_size)
        train_loss = sum(losses) / len(losses) if losses else None
        history.append({"epoch": epoch, "train_loss": train_loss, **{f"heldout_{k}": v for k, v in held.items()}})
    model.rating_bias = float(bias.detach())
    train_eval = evaluate_all(model, train, train_ratings, model.rating_bias, cfg.batch_size)
    last = history[-1] if history else {"train_loss": None, **{f"heldout_{k}": None for k in evaluate_all(
        model, [], [], 0.0, 1)}}
    metrics = {**{k: v for k, v in last.items() if k != "epoch"}, "train_accuracy": train_eval["accuracy"],
               "train_pair_accuracy": train_eval["pair_accuracy"], "train_rating_accuracy": train_eval["rating_accuracy"],
               "rating_bias": model.rating_bias, "n_pairs": len(pairs), "n_ratings": len(ratings),
               "n_train": len(train), "n_train_ratings": len(train_ratings), "n_heldout": len(heldout),
               "n_heldout_ratings": len(held_ratings), "history": history}
    return model.eval(), metrics
