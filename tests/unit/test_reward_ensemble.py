"""The judge ensemble (detail 24): mean of members against a naive loop, save/load, training, agreement."""

import pytest
import torch

from tests.unit.test_reward_model import char_tokenizer, one_thread, preference_pairs, tiny_gpt2  # noqa: F401  (autouse)
from training.config import RewardConfig
from training.records import Rating
from training.reward_ensemble import RewardEnsemble, judge_agreement, load_reward_models, train_ensemble
from training.reward_model import RewardModel, evaluate_all, train_reward_model

ITEMS = [("question 1", "yes good"), ("question 2", "no bad"), ("question 3", "maybe")]


def members(n: int) -> list[RewardModel]:
    tok = char_tokenizer()
    out = []
    for j in range(n):
        m = RewardModel(tiny_gpt2(len(tok.get_vocab()), seed=j).transformer, tok, 48)
        m.rating_bias = 0.5 * j
        out.append(m.eval())
    return out


def test_scores_are_the_mean_of_the_members_and_forward_agrees():
    ms = members(3)
    ensemble = RewardEnsemble(ms)
    naive = [sum(float(m.score([item])[0]) for m in ms) / 3 for item in ITEMS]  # one item, one member at a time
    torch.testing.assert_close(ensemble.score(ITEMS), torch.tensor(naive), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ensemble(*ensemble.encode(ITEMS)), ensemble.score(ITEMS), rtol=1e-5, atol=1e-5)
    assert ensemble.member_scores(ITEMS).shape == (3, len(ITEMS))
    assert ensemble.rating_bias == pytest.approx(0.5)  # mean of 0, 0.5, 1.0: the mean logit's bias


def test_an_empty_ensemble_is_refused():
    with pytest.raises(ValueError, match="at least one member"):
        RewardEnsemble([])


def test_save_and_load_round_trip_and_load_reward_models_tells_the_kinds_apart(tmp_path):
    ensemble = RewardEnsemble(members(2))
    ensemble.save(tmp_path / "judge")
    single = members(1)[0]
    single.save(tmp_path / "single")
    loaded = load_reward_models(tmp_path / "judge", device="cpu")
    assert isinstance(loaded, RewardEnsemble) and len(loaded.members) == 2
    torch.testing.assert_close(loaded.score(ITEMS), ensemble.score(ITEMS))
    assert loaded.rating_bias == pytest.approx(ensemble.rating_bias)
    again = load_reward_models(tmp_path / "single", device="cpu")
    assert isinstance(again, RewardModel)
    torch.testing.assert_close(again.score(ITEMS), single.score(ITEMS))


def test_member_zero_is_the_single_judge_and_the_others_differ():
    tok = char_tokenizer()
    pairs = preference_pairs(24)
    ratings = [Rating(f"question {i}", "yes good" if i % 2 else "no bad", bool(i % 2)) for i in range(12)]
    cfg = RewardConfig(lr=3e-3, epochs=2, batch_size=8, max_len=48, heldout_fraction=0.25, seed=0, device="cpu")
    trunk = lambda: tiny_gpt2(len(tok.get_vocab())).transformer  # noqa: E731  the same start for every member
    single, single_metrics = train_reward_model(trunk(), tok, pairs, cfg, ratings=ratings)
    ensemble, metrics = train_ensemble(trunk, tok, pairs, cfg, ratings, members=3)
    scores = ensemble.member_scores(ITEMS)  # (3, N)
    torch.testing.assert_close(scores[0], single.score(ITEMS))  # member 0 trains exactly as one judge does
    assert not torch.allclose(scores[1], scores[0]) and not torch.allclose(scores[2], scores[1])
    assert metrics["members"] == 3 and len(metrics["member_heldout_accuracy"]) == 3
    assert metrics["member_heldout_accuracy"][0] == single_metrics["heldout_accuracy"]
    held = [a for a in metrics["member_heldout_accuracy"] if a is not None]
    assert metrics["heldout_accuracy"] == pytest.approx(sum(held) / len(held))
    assert evaluate_all(ensemble, pairs, ratings, ensemble.rating_bias, 8)["accuracy"] is not None  # usable as a judge


def naive_agreement(cand, parent):
    """Per member and prompt: count wins (ties half) over every candidate x parent sample pair."""
    rates, verdicts = [], []
    for c_member, p_member in zip(cand, parent):
        fractions = []
        for c, p in zip(c_member, p_member):
            wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in c for b in p)
            fractions.append(wins / (len(c) * len(p)))
        rates.append(sum(fractions) / len(fractions))
        verdicts.append([f > 0.5 for f in fractions])
    split = sum(1 for i in range(len(verdicts[0])) if len({v[i] for v in verdicts}) > 1)
    return rates, split / len(verdicts[0])


def test_agreement_matches_a_naive_count():
    gen = torch.Generator().manual_seed(0)
    cand = torch.randn(3, 5, 4, generator=gen).tolist()  # (J, P, k)
    parent = torch.randn(3, 5, 4, generator=gen).tolist()
    parent[1][2] = list(cand[1][2])  # a prompt where member 1 ties: fraction 0.5, not a win
    got = judge_agreement(cand, parent)
    rates, disagreement = naive_agreement(cand, parent)
    assert got["members"] == 3
    assert got["member_win_rates"] == pytest.approx(rates)
    assert got["disagreement"] == pytest.approx(disagreement)


def test_members_that_agree_have_no_disagreement():
    cand = [[[1.0, 2.0], [0.0, 0.0]]] * 2
    parent = [[[0.0, 0.0], [1.0, 1.0]]] * 2
    got = judge_agreement(cand, parent)
    assert got == {"members": 2, "member_win_rates": [0.5, 0.5], "disagreement": 0.0}


def test_the_gate_scores_with_the_members_mean_and_keeps_each_members_view():
    from training.gate_eval import PolicySamples, score_members, score_samples
    ensemble = RewardEnsemble(members(3))
    prompts = ["question 1", "question 2"]
    samples = PolicySamples(texts=[["yes good", "maybe"], ["no bad", "yes good"]])  # (P, k) = (2, 2)
    per_member = score_members(ensemble, prompts, samples)  # (J, P, k)
    direct = ensemble.member_scores([(p, t) for p, g in zip(prompts, samples.texts) for t in g])  # (J, P * k)
    torch.testing.assert_close(torch.tensor(per_member).reshape(3, 4), direct)
    mean = score_samples(ensemble, prompts, samples)  # what the gate decides on
    torch.testing.assert_close(torch.tensor(mean), torch.tensor(per_member).mean(0))
    assert score_members(ensemble, [], PolicySamples()) == [[], [], []]
