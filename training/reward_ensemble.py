"""An ensemble of reward models that scores as the mean of its members (the gate's judge, detail 24;
PPO's reward model, detail 25).

    ids, mask (B, L) -> member j -> r_j (B,) -> mean over j -> r (B,);   b = mean over j of b_j

The members train on the same feedback with different seeds (head init, held-out split, batch order),
so part of each one's error is its own; the mean of their logits r - b is the ensemble's logit. It has
the interface of a RewardModel (`encode`, `forward`, `score`, `rating_bias`), so the gate and the
accuracy figures use it unchanged. `member_scores` keeps each member's view, for the disagreement.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from training.config import RewardConfig
from training.gate import per_prompt_win_fractions
from training.records import PreferencePair, Rating
from training.reward_model import RewardModel, train_reward_model

ENSEMBLE_FILE = "ensemble.json"
SEED_STRIDE = 1009
"""Member j trains with seed cfg.seed + j * SEED_STRIDE (member 0 is exactly the single judge)."""


class RewardEnsemble(nn.Module):
    """J reward models on one tokenizer; forward and score give the mean of the members' rewards."""

    def __init__(self, members: list[RewardModel]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a reward ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.rating_bias = sum(m.rating_bias for m in members) / len(members)
        """b of the mean logit: P(thumbs up) = sigmoid(mean_j (r_j - b_j)) = sigmoid(r - b)."""

    @property
    def tokenizer(self) -> Any:
        return self.members[0].tokenizer

    @property
    def backbone(self) -> nn.Module:
        """Member 0's trunk: what PPO's value model starts from (`value_model_from`, detail 20)."""
        return self.members[0].backbone

    def encode(self, items: list[tuple[str, str]], tokenizer: Any = None) -> tuple[Tensor, Tensor]:
        """(B, L) ids and mask, as every member encodes them (one tokenizer, one max_len)."""
        return self.members[0].encode(items, tokenizer)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        r_j = torch.stack([m(ids, mask) for m in self.members])  # (J, B) each member's reward
        return r_j.mean(0)  # (B,)

    @torch.no_grad()
    def member_scores(self, items: list[str] | list[tuple[str, str]], tokenizer: Any = None,
                      batch_size: int = 16) -> Tensor:
        """(J, N) CPU rewards of every member."""
        return torch.stack([m.score(items, tokenizer, batch_size) for m in self.members])

    @torch.no_grad()
    def score(self, items: list[str] | list[tuple[str, str]], tokenizer: Any = None, batch_size: int = 16) -> Tensor:
        """(N,) CPU mean rewards."""
        return self.member_scores(items, tokenizer, batch_size).mean(0)

    def save(self, path: str | Path) -> None:
        """Each member in `member-<j>/` (RewardModel.save) and the member count in ensemble.json."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for j, m in enumerate(self.members):
            m.save(path / f"member-{j}")
        (path / ENSEMBLE_FILE).write_text(json.dumps({"members": len(self.members), "format": 1}, indent=2))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "RewardEnsemble":
        n = int(json.loads((Path(path) / ENSEMBLE_FILE).read_text())["members"])
        return cls([RewardModel.load(Path(path) / f"member-{j}", device=device) for j in range(n)]).eval()


def train_ensemble(make_trunk: Callable[[], nn.Module], tokenizer: Any, pairs: list[PreferencePair],
                   cfg: RewardConfig, ratings: list[Rating], members: int) -> tuple[RewardEnsemble, dict[str, Any]]:
    """`members` reward models, each trained by train_reward_model on a fresh trunk from `make_trunk`
    with its own seed. Metrics: member 0's counts (`n_*`); every other figure is the members' mean,
    each on its own held-out split, which the other members may have trained on (so the ensemble's
    unseen accuracy must be measured on feedback none of them saw); `member_heldout_accuracy` and
    `member_train_accuracy` list each member's."""
    models, each = [], []
    for j in range(members):
        member_cfg = replace(cfg, seed=cfg.seed + j * SEED_STRIDE)
        model, metrics = train_reward_model(make_trunk(), tokenizer, pairs, member_cfg, ratings=ratings)
        models.append(model)
        each.append(metrics)
    out = {k: v for k, v in each[0].items() if k.startswith("n_")}
    for key in (k for k, v in each[0].items() if not k.startswith("n_") and isinstance(v, (float, type(None)))):
        values = [m[key] for m in each if m.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    out |= {f"member_{key}": [m.get(key) for m in each] for key in ("heldout_accuracy", "train_accuracy")}
    out["members"] = members
    return RewardEnsemble(models), out


def load_reward_models(path: str | Path, device: str | None = None) -> RewardModel | RewardEnsemble:
    """A saved judge or policy reward model: an ensemble when `path` holds ensemble.json, else one model."""
    if (Path(path) / ENSEMBLE_FILE).exists():
        return RewardEnsemble.load(path, device)
    return RewardModel.load(path, device)


def judge_agreement(member_cand: list[list[list[float]]], member_parent: list[list[list[float]]]) -> dict:
    """Each member's win rate of candidate over parent, and the share of prompts on which the members
    disagree about the winner (one member's per-prompt win fraction above 0.5, another's not).

    member_cand[j][i][s]: member j's score of the candidate's s-th sample on prompt i; same for parent.
    """
    per_member = [per_prompt_win_fractions(c, p) for c, p in zip(member_cand, member_parent)]  # (J, P)
    win_rates = [sum(f) / len(f) if f else 0.5 for f in per_member]  # (J,)
    verdicts = list(zip(*[[f > 0.5 for f in fractions] for fractions in per_member]))  # (P, J)
    split = [v for v in verdicts if len(set(v)) > 1]
    return {"members": len(per_member), "member_win_rates": win_rates,
            "disagreement": len(split) / len(verdicts) if verdicts else 0.0}
