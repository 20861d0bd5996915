"""oneDNN-packed linear weights for CPU decoding (service/packed_linear.py, RLHF_CPU_PACKED_WEIGHTS)."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from service.packed_linear import (PACKED_MAX_ROWS, PACKED_MIN_ROWS, PackedConv1D, PackedLinear, pack_linear_layers,
                                   packing_available)

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed linear ops")


def tiny(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_positions=128)
    return GPT2LMHeadModel(cfg).eval()


def packed_ops(fn) -> int:
    """How many oneDNN packed products `fn` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum("_linear_pointwise" in e.name for e in prof.events())


def test_a_packed_model_gives_the_dense_models_logits_and_keeps_its_parameters():
    dense = tiny()
    model = copy.deepcopy(dense)
    assert pack_linear_layers(model) == 2 * 4 + 1  # per block c_attn, attn c_proj, c_fc, mlp c_proj; lm_head
    assert type(model.transformer.h[0].attn.c_attn) is PackedConv1D and type(model.lm_head) is PackedLinear
    assert model.state_dict().keys() == dense.state_dict().keys()
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(dense.named_parameters())[name]), name
    for shape in ((16, 1), (4, 8), (2, 40)):  # decoding steps (16 and 32 rows) and a prefill of 80 rows
        ids = torch.randint(0, 97, shape)
        with torch.inference_mode():
            torch.testing.assert_close(model(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)


def test_small_products_take_the_packed_weight_and_long_ones_the_dense():
    model = tiny()
    pack_linear_layers(model)
    layers = 9
    with torch.inference_mode():
        assert packed_ops(lambda: model(torch.randint(0, 97, (PACKED_MAX_ROWS, 1)))) == layers
        assert packed_ops(lambda: model(torch.randint(0, 97, (PACKED_MIN_ROWS, 1)))) == layers
        assert packed_ops(lambda: model(torch.randint(0, 97, (1, PACKED_MAX_ROWS + 1)))) == 0  # a long prefill
        assert packed_ops(lambda: model(torch.randint(0, 97, (1, 1)))) == 0  # one sequence's step: MKL's gemv


def test_a_replaced_weight_is_never_read_from_the_stale_packed_copy():
    """peft's safe merge writes a new weight tensor into a working copy that shares the base's layers' state."""
    model = tiny()
    pack_linear_layers(model)
    merged = copy.deepcopy(model)  # the packed copy is shared, as a working copy shares the weights
    layer = merged.transformer.h[0].mlp.c_fc
    assert layer._packed is model.transformer.h[0].mlp.c_fc._packed
    x = torch.randn(3, 1, 64)
    with torch.no_grad():
        layer.weight.data = layer.weight.data + 0.5
        assert packed_ops(lambda: layer(x)) == 0
        torch.testing.assert_close(layer(x), torch.addmm(layer.bias, x.view(3, 64), layer.weight).view(3, 1, -1))
        layer.weight.mul_(2.0)  # in place, on the parameter: its version moves on
        torch.testing.assert_close(layer(x), torch.addmm(layer.bias, x.view(3, 64), layer.weight).view(3, 1, -1))


def test_training_runs_the_dense_product_and_gets_gradients():
    model = tiny()
    pack_linear_layers(model)
    ids = torch.randint(0, 97, (2, 4))
    assert packed_ops(lambda: model(ids, labels=ids).loss.backward()) == 0
    assert model.transformer.h[0].attn.c_attn.weight.grad is not None


def test_an_unmerged_lora_adapter_on_a_packed_base_gives_the_dense_bases_logits():
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False)
    packed_base = tiny()
    pack_linear_layers(packed_base)
    dense_base = tiny()
    torch.manual_seed(1)
    dense = get_peft_model(dense_base, config).eval()
    torch.manual_seed(1)  # the same adapter weights (a load_state_dict would copy into the base in place:
    packed = get_peft_model(packed_base, config).eval()  # changed weights, and rightly no packed products)
    ids = torch.randint(0, 97, (8, 1))
    with torch.inference_mode():
        assert packed_ops(lambda: packed(ids)) > 0
        torch.testing.assert_close(packed(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packed", [True, False])
def test_the_server_loads_cpu_models_packed_unless_the_setting_is_off(tiny_model_dir, packed):
    """The server's loader (ModelPool passes it RLHF_CPU_PACKED_WEIGHTS) packs a CPU model unless told not to, and
    its forward check (8 probe tokens) runs the packed path, as serving will."""
    from transformers import AutoModelForCausalLM

    from service.model_pool import load_model_dir

    loaded = {}
    probe_products = packed_ops(lambda: loaded.update(lm=load_model_dir(tiny_model_dir, "v0001", torch.device("cpu"),
                                                                       packed_weights=packed)))
    lm = loaded["lm"]
    kinds = {type(m).__name__ for m in lm.model.modules()} & {"Conv1D", "Linear", "PackedConv1D", "PackedLinear"}
    assert kinds == ({"PackedConv1D", "PackedLinear"} if packed else {"Conv1D", "Linear"})
    assert (probe_products > 0) == packed
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, dense.config.vocab_size, (4, 1))
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)
