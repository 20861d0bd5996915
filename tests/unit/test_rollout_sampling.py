"""PPO samples from exactly the distribution it scores: a model's generation_config.json changes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.unit.test_ppo_trainer import PROMPTS, char_tokenizer, config, tiny_gpt2
from training.ppo import logprobs_from_logits
from training.ppo_trainer import load_causal_lm
from training.reference import norm_prompt_set, reference_reward_norm
from training.reward_model import RewardModel
from training.rollout import encode_prompt, generate, left_pad, pad_id_of, response_logits, sample_tokens

HOSTILE_GENERATION_CONFIG = {"repetition_penalty": 1.3, "min_p": 0.2, "top_k": 5, "top_p": 0.5,
                             "no_repeat_ngram_size": 2, "do_sample": True, "temperature": 0.3}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tok = char_tokenizer()
    plain = tmp_path_factory.mktemp("plain")
    tiny_gpt2(len(tok.get_vocab()), 0).save_pretrained(plain)
    tok.save_pretrained(plain)
    (plain / "generation_config.json").unlink(missing_ok=True)
    hostile = tmp_path_factory.mktemp("hostile")
    shutil.copytree(plain, hostile, dirs_exist_ok=True)
    (hostile / "generation_config.json").write_text(json.dumps(HOSTILE_GENERATION_CONFIG))
    return tok, plain, hostile


def queries(tok):
    ids, mask = left_pad([encode_prompt(tok, p, 32) for p in PROMPTS], pad_id_of(tok))
    return ids, mask


def test_generation_is_identical_with_or_without_a_generation_config(dirs):
    tok, plain, hostile = dirs
    cfg = config(max_new_tokens=12, temperature=1.0)
    query, mask = queries(tok)
    out = {}
    for name, path in (("plain", plain), ("hostile", hostile)):
        model = load_causal_lm(path, torch.device("cpu"), trainable=False)
        assert name == "plain" or model.generation_config.repetition_penalty == 1.3  # the file was read
        out[name] = generate(model, query, mask, tok, cfg, torch.Generator().manual_seed(7))
    for a, b in zip(out["plain"], out["hostile"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_tokens_logprobs_equal_the_scoring_pass(dirs, temperature):
    tok, _, hostile = dirs
    model = load_causal_lm(hostile, torch.device("cpu"), trainable=False)
    query, qmask = queries(tok)
    tokens, sampler_logps = sample_tokens(model, query, qmask, 12, temperature, tok.eos_token_id, pad_id_of(tok),
                                          torch.Generator().manual_seed(3))
    rmask = torch.ones_like(tokens)
    rescored = logprobs_from_logits(response_logits(model, query, qmask, tokens, rmask, temperature), tokens)
    eos_seen = (tokens == tok.eos_token_id).long().cumsum(-1) - (tokens == tok.eos_token_id).long()
    live = eos_seen == 0  # (B, T) up to and including the first EOS
    torch.testing.assert_close(sampler_logps[live], rescored[live], atol=1e-4, rtol=1e-4)
    assert (sampler_logps[~live] == 0).all()


def test_sampler_frequencies_follow_the_softmax(dirs):
    """First-token frequencies over many draws match softmax(logits / T): no hidden warper."""
    tok, _, hostile = dirs
    model = load_causal_lm(hostile, torch.device("cpu"), trainable=False)
    query, qmask = queries(tok)
    query, qmask = query[:1].repeat(4000, 1), qmask[:1].repeat(4000, 1)
    tokens, _ = sample_tokens(model, query, qmask, 1, 1.0, -1, pad_id_of(tok), torch.Generator().manual_seed(0))
    probs = torch.softmax(response_logits(model, query[:1], qmask[:1], tokens[:1], torch.ones_like(tokens[:1]),
                                          1.0)[0, 0], -1)  # (V,)
    freq = torch.bincount(tokens[:, 0], minlength=probs.numel()).float() / 4000
    assert float((freq - probs).abs().max()) < 0.03
    assert int((freq > 0).sum()) > 20  # repetition/min_p/top_k would have cut the support to a handful


def test_reward_normalisation_comes_from_the_reference_on_a_fixed_prompt_set(dirs):
    tok, plain, _ = dirs
    ref = load_causal_lm(plain, torch.device("cpu"), trainable=False)
    rm = RewardModel(tiny_gpt2(len(tok.get_vocab()), 5).transformer, tok, 64).eval()
    cfg = config(rollout_batch_size=8, mini_batch_size=8, norm_seed=11)
    fixed = norm_prompt_set(PROMPTS * 3, 6, seed=11)
    assert fixed == norm_prompt_set(list(reversed(PROMPTS)), 6, seed=11) and len(fixed) == 6
    gain, bias = reference_reward_norm(ref, rm, tok, fixed, cfg)
    assert (gain, bias) == reference_reward_norm(ref, rm, tok, fixed, config(rollout_batch_size=8, mini_batch_size=8,
                                                                             norm_seed=11, seed=99))
    assert gain > 0


def test_sampling_with_room_in_the_kv_cache_equals_the_models_own_cache(dirs, monkeypatch):
    """Rollouts write each step's keys and values into a cache with room for the whole response
    (training.kv_cache): one buffer per layer for the whole call, and the tokens and log-probs are exactly
    those of transformers' own cache (kv_room=0)."""
    import training.rollout as rollout
    from training.kv_cache import GrowingLayer
    tok, plain, _ = dirs
    model = load_causal_lm(plain, torch.device("cpu"), trainable=False)
    query, qmask = queries(tok)
    caches = []
    real_forward = rollout.forward_cached

    def spy(*args):
        logits, cache = real_forward(*args)
        caches.append(cache)
        return logits, cache
    monkeypatch.setattr(rollout, "forward_cached", spy)

    def sample(**kw):
        caches.clear()
        out = sample_tokens(model, query, qmask, 16, 1.0, -1, pad_id_of(tok), torch.Generator().manual_seed(5), **kw)
        return out, [(type(c.layers[0]), getattr(c.layers[0], "_kbuf", None)) for c in caches]
    grown, grown_layers = sample()
    own, own_layers = sample(kv_room=0)
    assert grown[0].shape[1] == 16 and torch.equal(grown[0], own[0]) and torch.equal(grown[1], own[1])
    assert {t for t, _ in grown_layers} == {GrowingLayer} and {t for t, _ in own_layers} != {GrowingLayer}
    assert len({buf.data_ptr() for _, buf in grown_layers}) == 1  # room for all 16 tokens: never reallocated
    assert grown_layers[0][1].shape[-2] == query.shape[1] + 16
