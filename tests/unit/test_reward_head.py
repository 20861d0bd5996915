"""The pure trunk + scalar head (training/reward_head.py): values and rewards, the value model copy,
and a reward model directory in the saved format (trunk, head, json config) still loads."""

import json

import torch
from safetensors.torch import save_file

from tests.unit.test_reward_model import char_tokenizer, tiny_gpt2
from training.reward_head import ScalarHeadConfig, ScalarHeadModel, value_model_from
from training.reward_model import RewardModel
from training.sequences import left_pad


def test_reward_is_the_value_at_the_last_real_token():
    model = ScalarHeadModel(tiny_gpt2(20), ScalarHeadConfig()).eval()  # a causal LM: its trunk is kept
    assert not hasattr(model.backbone, "lm_head")
    ids, mask = left_pad([[3, 4, 5], [6, 7]], pad_id=0)  # (2, 3)
    values = model.token_values(ids, mask)  # (2, 3)
    assert values.shape == (2, 3)
    torch.testing.assert_close(model(ids, mask), values[:, -1])  # left padding: the last column
    right = torch.tensor([[6, 7, 0]]), torch.tensor([[1, 1, 0]])  # a response padded after its end
    torch.testing.assert_close(model(*right), model.token_values(*right)[:, 1])  # the last real token, not [-1]


def test_value_model_is_a_zero_head_on_a_copy_of_the_trunk_and_draws_no_random_numbers():
    rm = ScalarHeadModel(tiny_gpt2(20)).eval()
    torch.manual_seed(1)
    value = value_model_from(rm)
    after_copy = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(after_copy, torch.rand(1))  # the RNG stream did not move
    ids, mask = left_pad([[3, 4, 5]], pad_id=0)
    assert torch.count_nonzero(value.token_values(ids, mask)) == 0
    assert all(p.requires_grad for p in value.parameters()) and not value.training
    assert not {id(p) for p in value.parameters()} & {id(p) for p in rm.parameters()}


def test_a_reward_model_saved_in_the_format_still_loads(tmp_path):
    """The files written by every version so far: trunk (save_pretrained), reward_head.safetensors,
    reward_config.json (rating_bias only since thumbs ratings), the tokenizer."""
    tok = char_tokenizer()
    trunk = tiny_gpt2(len(tok.get_vocab())).transformer
    trunk.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    head = {"weight": torch.full((1, 32), 0.01), "bias": torch.tensor([0.5])}
    save_file(head, str(tmp_path / "reward_head.safetensors"))
    (tmp_path / "reward_config.json").write_text(json.dumps({"hidden_size": 32, "max_len": 40, "format": 1}))
    loaded = RewardModel.load(tmp_path, device="cpu")
    assert loaded.max_len == 40 and loaded.rating_bias == 0.0 and loaded.tokenizer is not None
    ids, mask = loaded.encode([("question", "yes good")])
    hidden = trunk.eval()(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]  # (1, 32)
    torch.testing.assert_close(loaded.score([("question", "yes good")]), hidden @ head["weight"].T[:, 0] + 0.5)
