"""Reward model: Bradley-Terry loss, training, held-out accuracy, save/load, rating pairs."""

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from training.config import RewardConfig
from training.records import PreferencePair, Rating, pairs_from_ratings, pairs_from_ratings_with_stats
from training.reward_model import RewardModel, bradley_terry_loss, evaluate_pairs, train_reward_model

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :\n.,?!'"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in memory (nothing downloaded)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_layer=1, n_embd=32, n_head=2, n_positions=64,
                     eos_token_id=1, bos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: extra threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bradley_terry_loss_values():
    loss = bradley_terry_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]))
    expected = (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(-2.0)))) / 2
    torch.testing.assert_close(loss, expected)
    weighted = bradley_terry_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(weighted, torch.log1p(torch.exp(torch.tensor(-2.0))))


def preference_pairs(n: int) -> list[PreferencePair]:
    return [PreferencePair(f"question {i}", "yes good", "no bad", 1.0) for i in range(n)]


def test_training_lowers_loss_and_reports_heldout_accuracy(tmp_path):
    tok = char_tokenizer()
    pairs = preference_pairs(20)
    cfg = RewardConfig(lr=3e-3, epochs=3, batch_size=8, max_len=48, heldout_fraction=0.25, seed=0, device="cpu")
    fresh = RewardModel(tiny_gpt2(len(tok.get_vocab())).transformer, tok, cfg.max_len)
    before = evaluate_pairs(fresh, pairs, 8)["loss"]
    model, metrics = train_reward_model(fresh, tok, pairs, cfg)
    assert metrics["n_train"] + metrics["n_heldout"] == 20 and metrics["n_heldout"] == 5
    assert len(metrics["history"]) == 3
    assert metrics["heldout_accuracy"] == 1.0
    assert metrics["heldout_loss"] < before and metrics["train_loss"] < before
    scores = model.score([("question 99", "yes good"), ("question 99", "no bad")])
    assert scores[0] > scores[1]
    model.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm", device="cpu")
    torch.testing.assert_close(loaded.score([("question 99", "yes good"), ("question 99", "no bad")]), scores)


def test_train_from_policy_dir_same_seed_same_result(tmp_path):
    tok = char_tokenizer()
    tiny_gpt2(len(tok.get_vocab())).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = RewardConfig(lr=1e-3, epochs=1, batch_size=4, max_len=48, heldout_fraction=0.25, seed=3, device="cpu")
    _, m1 = train_reward_model(tmp_path, tok, preference_pairs(8), cfg)
    _, m2 = train_reward_model(tmp_path, tok, preference_pairs(8), cfg)
    assert m1 == m2 and 0.0 <= m1["heldout_accuracy"] <= 1.0


def test_pairs_from_ratings_same_prompt_and_unpartnered():
    ratings = [
        Rating("p1", "good1", True), Rating("p1", "bad1", False), Rating("p1", "good1b", True),
        Rating("p2", "good2", True),  # unpartnered up
        Rating("p3", "bad3", False), Rating("p4", "bad4", False),  # unpartnered downs
        Rating("p1", "good1", True),  # duplicate, ignored
    ]
    pairs, stats = pairs_from_ratings_with_stats(ratings, cross_prompt_weight=0.5)
    same = [p for p in pairs if p.rejected_prompt is None]
    assert {(p.chosen, p.rejected) for p in same} == {("good1", "bad1"), ("good1b", "bad1")}
    assert all(p.weight == 1.0 and p.prompt == "p1" for p in same)
    cross = [p for p in pairs if p.rejected_prompt is not None]
    assert [(p.prompt, p.chosen, p.rejected_prompt, p.rejected) for p in cross] == [
        ("p2", "good2", "p3", "bad3"), ("p2", "good2", "p4", "bad4")]
    assert all(p.weight == 0.5 and p.rejected_context == p.rejected_prompt for p in cross)
    assert (stats.same_prompt_pairs, stats.cross_prompt_pairs, stats.dropped) == (2, 2, 0)
    assert pairs_from_ratings(ratings, 0.5) == pairs


def test_unpartnered_ratings_dropped_without_opposite_sign():
    ratings = [Rating("p1", "a", True), Rating("p2", "b", True), Rating("p3", "x", True), Rating("p3", "y", False)]
    pairs, stats = pairs_from_ratings_with_stats(ratings)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("p3", "x", "y")]
    assert stats.dropped == 2 and stats.unpartnered_up == 2
    assert pairs_from_ratings([Rating("p", "same", True), Rating("p", "same", False)]) == []
