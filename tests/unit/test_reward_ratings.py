"""Reward model on thumbs ratings: the pointwise logistic loss, the joint loss with Bradley-Terry, the
held-out split by prompt (nothing of a held-out prompt is trained on), held-out rating figures."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_reward_model import char_tokenizer, tiny_gpt2
from training.config import RewardConfig
from training.records import PreferencePair, Rating, pairs_from_ratings, split_by_prompt
from training.reward_model import (RewardModel, balanced_accuracy, batch_loss, binary_auc, bradley_terry_losses, joint_reward_loss,
                                   pointwise_logistic_losses, train_reward_model)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_pointwise_logistic_losses_match_naive():
    r, up, b = [2.0, -1.0, 0.5, 0.0], [True, True, False, False], 0.3
    got = pointwise_logistic_losses(torch.tensor(r), torch.tensor(up), torch.tensor(b))
    naive = [-math.log(_sigmoid(x - b)) if u else -math.log(1 - _sigmoid(x - b)) for x, u in zip(r, up)]
    torch.testing.assert_close(got, torch.tensor(naive))


def test_bradley_terry_losses_match_naive():
    r_c, r_r = [1.0, -0.5, 3.0], [0.0, 0.5, 3.0]
    naive = [-math.log(_sigmoid(c - r)) for c, r in zip(r_c, r_r)]
    torch.testing.assert_close(bradley_terry_losses(torch.tensor(r_c), torch.tensor(r_r)), torch.tensor(naive))


def test_joint_loss_is_a_weighted_mean_over_items_and_ignores_weight_zero():
    lp, wp, lr, wr, lam = [0.5, 1.5], [1.0, 2.0], [0.2, 0.9, 7.0], [1.0, 0.5, 0.0], 0.7
    naive = (sum(l * w for l, w in zip(lp, wp)) + lam * sum(l * w for l, w in zip(lr, wr))) / (sum(wp) + sum(wr))
    got = joint_reward_loss(torch.tensor(lp), torch.tensor(wp), torch.tensor(lr), torch.tensor(wr), lam)
    torch.testing.assert_close(got, torch.tensor(naive))
    ratings_only = joint_reward_loss(torch.zeros(0), torch.zeros(0), torch.tensor(lr[:2]), torch.tensor(wr[:2]), 1.0)
    torch.testing.assert_close(ratings_only, torch.tensor((0.2 + 0.45) / 1.5))


def test_binary_auc_matches_pairwise_count():
    scores, labels = [0.1, 0.4, 0.35, 0.8, 0.4], [0, 0, 1, 1, 1]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    naive = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))
    assert binary_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(naive)
    assert binary_auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) is None


def test_weighted_balanced_accuracy_matches_a_naive_weighted_count():
    predicted = torch.tensor([True, False, True, True, False, False])
    ups = torch.tensor([True, True, True, False, False, False])
    weight = torch.tensor([1.0, 0.1, 1.0, 0.2, 1.0, 1.0])  # the two wrong labels come from down-weighted voters
    naive = []
    for c in (True, False):
        num = sum(float(w) for p, u, w in zip(predicted, ups, weight) if bool(u) == c and bool(p) == c)
        den = sum(float(w) for u, w in zip(ups, weight) if bool(u) == c)
        naive.append(num / den)
    assert balanced_accuracy(predicted, ups, weight) == pytest.approx(sum(naive) / 2)
    assert balanced_accuracy(predicted, ups, weight) > balanced_accuracy(predicted, ups)


def test_balanced_accuracy_is_chance_for_a_constant_guess():
    ups = torch.tensor([False] * 8 + [True] * 2)
    assert balanced_accuracy(torch.zeros(10, dtype=torch.bool), ups) == 0.5  # plain accuracy would be 0.8
    assert balanced_accuracy(ups.clone(), ups) == 1.0
    predicted = torch.tensor([False] * 6 + [True] * 2 + [True, False])
    assert balanced_accuracy(predicted, ups) == pytest.approx((6 / 8 + 1 / 2) / 2)


items = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9), st.booleans()), max_size=40)


@settings(max_examples=60, deadline=None)
@given(pair_rows=items, rating_rows=items, fraction=st.floats(0.0, 0.9), seed=st.integers(0, 5))
def test_split_by_prompt_never_shares_a_prompt(pair_rows, rating_rows, fraction, seed):
    pairs = [PreferencePair(f"p{a}", "good", "bad", rejected_prompt=f"p{b}" if cross else None)
             for a, b, cross in pair_rows]
    ratings = [Rating(f"p{a}", f"r{b}", up) for a, b, up in rating_rows]
    tp, tr, hp, hr = split_by_prompt(pairs, ratings, fraction, seed)
    assert sorted(map(repr, tp + hp)) == sorted(map(repr, pairs)) and sorted(map(repr, tr + hr)) == sorted(map(repr, ratings))
    trained = {p.prompt for p in tp} | {p.rejected_context for p in tp} | {r.prompt for r in tr}
    assert not trained & {r.prompt for r in hr}
    assert all(p.prompt not in trained or p.rejected_context not in trained for p in hp)
    all_prompts = {p.prompt for p in pairs} | {r.prompt for r in ratings}
    if len(all_prompts) > 1 and all(p.rejected_prompt is None for p in pairs):
        assert trained, "never hold out everything"


def rating_data(n_prompts: int) -> list[Rating]:
    out = []
    for i in range(n_prompts):
        out += [Rating(f"question {i}", "yes good", True), Rating(f"question {i}", "no bad", False)]
    return out


class RecordingRM(RewardModel):
    """Records every (prompt, response) the model is trained on (encoded while gradients are on)."""

    trained_on: list[tuple[str, str]] = []

    def encode(self, items, tokenizer=None):
        if torch.is_grad_enabled():
            self.trained_on.extend(items)
        return super().encode(items, tokenizer)


def test_ratings_alone_train_the_reward_and_heldout_prompts_are_never_trained_on(tmp_path):
    tok = char_tokenizer()
    ratings = rating_data(12)
    pairs = [PreferencePair(f"question {i}", "yes good", "no bad") for i in range(12, 16)]
    cfg = RewardConfig(lr=3e-3, epochs=3, batch_size=8, max_len=48, heldout_fraction=0.25, seed=0, device="cpu",
                       rating_pairs=True, rating_pair_weight=0.5)
    model = RecordingRM(tiny_gpt2(len(tok.get_vocab())).transformer, tok, cfg.max_len)
    model.trained_on = []
    model, m = train_reward_model(model, tok, pairs, cfg, ratings=ratings)
    _, _, held_pairs, held_ratings = split_by_prompt(pairs, ratings, cfg.heldout_fraction, cfg.seed)
    held_prompts = {r.prompt for r in held_ratings} | {p.prompt for p in held_pairs}
    assert held_prompts and m["n_heldout_ratings"] == len(held_ratings) > 0
    assert not {prompt for prompt, _ in model.trained_on} & held_prompts
    assert m["heldout_rating_accuracy"] == 1.0 and m["heldout_rating_auc"] == 1.0
    n_pair, n_rating = m["n_heldout"], m["n_heldout_ratings"]
    assert m["heldout_rating_balanced_accuracy"] == 1.0
    expected = ((m["heldout_pair_accuracy"] or 0) * n_pair + m["heldout_rating_balanced_accuracy"] * n_rating) / (n_pair + n_rating)
    assert m["heldout_accuracy"] == pytest.approx(expected)
    good, bad = model.score([("question 99", "yes good"), ("question 99", "no bad")])
    assert good > model.rating_bias > bad
    model.save(tmp_path / "rm")
    assert RewardModel.load(tmp_path / "rm", device="cpu").rating_bias == pytest.approx(model.rating_bias)


def test_batch_loss_honours_rating_weights():
    tok = char_tokenizer()
    model = RewardModel(tiny_gpt2(len(tok.get_vocab())).transformer, tok, 48).eval()  # dropout off
    bias = torch.tensor(0.1)
    ratings = [Rating("q", "yes good", True), Rating("q", "no bad", False)]
    spam = [Rating("q", "no bad", True, user_id="spammer", weight=0.0)] * 5
    pairs = [PreferencePair("q2", "yes good", "no bad", 2.0)]
    with torch.no_grad():
        clean = batch_loss(model, bias, pairs, ratings, 1.0)
        torch.testing.assert_close(batch_loss(model, bias, pairs, ratings + spam, 1.0), clean)
        heavier = batch_loss(model, bias, pairs, [Rating("q", "no bad", True, weight=3.0)] + ratings, 1.0)
    assert not torch.isclose(heavier, clean)


def test_unpartnered_ratings_are_not_paired_across_prompts_by_default():
    ratings = [Rating("p1", "a", True), Rating("p2", "b", False), Rating("p3", "x", True), Rating("p3", "y", False)]
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs_from_ratings(ratings)] == [("p3", "x", "y")]
    assert RewardConfig().rating_pair_weight == 0.0 and not RewardConfig().rating_pairs
