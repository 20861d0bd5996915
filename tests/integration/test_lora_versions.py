"""LoRA versions: an adapter version publishes, verifies, loads on one shared base, serves, hot-swaps
under load, rolls back; a corrupt adapter is refused while the old version keeps serving; pinned
versions share the base."""

from __future__ import annotations

import copy
import threading
import time

import grpc
import pytest
import torch

from rlhf.v1 import policy_pb2
from rlhf_core.keys import Keys
from service.model_pool import ModelPool
from service.packed_linear import pack_linear_layers
from tests.helpers import ServingStack, metric_value, point_at
from tests.lora_helpers import make_adapter_dir, publish_adapter


@pytest.fixture(scope="module")
def stack(redis_url, tiny_model_dir, tmp_path_factory):
    s = ServingStack(redis_url, tmp_path_factory.mktemp("reg-lora"), tiny_model_dir)
    yield s
    s.close()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter_dir(tiny_model_dir, root / f"a{i}", seed=i) for i in range(3)]


def gen(stack, **kw):
    return stack.server.policy.Generate(policy_pb2.GenerateRequest(
        prompt="Adapter test.", sampling=policy_pb2.SamplingParams(max_new_tokens=6), **kw), timeout=60)


def wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def served(stack) -> str:
    return stack.server.policy.GetModel(policy_pb2.GetModelRequest()).model_version


def test_merged_working_copy_matches_peft_and_leaves_the_base_intact(stack, adapters, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    v = publish_adapter(stack.registry, adapters[0], stack.v1)
    pool = ModelPool(stack.registry, torch.device("cpu"))
    base_lm = pool.load(stack.v1)
    merged, unmerged = pool.load(v, merged=True).model, ModelPool(stack.registry, torch.device("cpu")).load(v).model
    ids = torch.randint(0, 400, (2, 12))
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapters[0]))(ids).logits
        assert torch.allclose(merged(ids).logits, want, atol=1e-4)
        assert torch.allclose(unmerged(ids).logits, want, atol=1e-5)
        packed = copy.deepcopy(fresh)  # the pool serves CPU models with packed weights (RLHF_CPU_PACKED_WEIGHTS)
        pack_linear_layers(packed)
        assert torch.equal(base_lm.model(ids).logits, packed(ids).logits)  # the shared base is untouched
        assert not torch.allclose(want, fresh(ids).logits, atol=1e-3)  # and the adapter does change outputs
    assert pool.base_copies == 1  # v1 itself is the base of the adapter version


def test_a_swap_onto_a_served_base_neither_rehashes_nor_copies_it(stack, adapters, monkeypatch):
    """The swap's preparation: the resident base (verified when it loaded) is not checksummed again,
    and the working copy shares every module of the base except the adapted ones and their parents."""
    v = publish_adapter(stack.registry, adapters[2], stack.v1)
    pool = ModelPool(stack.registry, torch.device("cpu"))
    base = pool.load(stack.v1).model
    verified = []
    real_verify = stack.registry.verify
    monkeypatch.setattr(stack.registry, "verify", lambda version: verified.append(version) or real_verify(version))
    tree = pool.load(v, merged=False).model.get_base_model()
    assert verified == [v]  # the adapter's files only
    assert tree.transformer.wte is base.transformer.wte and tree.lm_head is base.lm_head
    assert tree.transformer.h[0].mlp is base.transformer.h[0].mlp  # not adapted: the base's own module
    assert tree.transformer.h[0].attn is not base.transformer.h[0].attn  # on the way to c_attn: a shallow copy
    # the base keeps its plain layers (packed for CPU decoding by default: RLHF_CPU_PACKED_WEIGHTS), no peft layer
    assert type(base.transformer.h[0].attn.c_attn).__name__ == "PackedConv1D"
    assert pool.base_copies == 1


def test_adapter_version_hot_swaps_under_load(stack, adapters):
    v = publish_adapter(stack.registry, adapters[1], stack.v1)
    files = {f.path for f in stack.registry.manifest(v).files}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    stop, seen, errors = threading.Event(), [], []

    def hammer():
        while not stop.is_set():
            try:
                seen.append(gen(stack).model_version)
            except Exception as exc:  # any failed request fails the test
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        point_at(stack.settings, v)
        assert wait_for(lambda: served(stack) == v)
        assert wait_for(lambda: seen and seen[-1] == v)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    text = stack.server.metrics_text()
    adapter_size = (stack.registry.path(v) / "adapter_model.safetensors").stat().st_size
    assert metric_value(text, "rlhf_model_last_load_bytes") < 2 * adapter_size + 10_000
    assert metric_value(text, "rlhf_model_base_copies") == 1


def test_pinned_versions_share_one_base(stack, adapters):
    current = served(stack)
    other = publish_adapter(stack.registry, adapters[2], stack.v1, promoted=False)
    assert gen(stack, model_version=other).model_version == other
    assert gen(stack, model_version=stack.v1).model_version == stack.v1
    assert gen(stack).model_version == current
    assert metric_value(stack.server.metrics_text(), "rlhf_model_base_copies") == 1


def test_corrupt_adapter_is_refused_and_old_version_keeps_serving(stack, adapters):
    current = served(stack)
    bad = publish_adapter(stack.registry, adapters[0], stack.v1)
    weights = stack.registry.path(bad) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))
    keys = Keys(stack.settings.key_prefix)
    stack.redis.set(keys.current_version, bad)  # the admin API would refuse; a hand edit moves it anyway
    stack.redis.publish(keys.model_events, bad)
    assert wait_for(lambda: metric_value(stack.server.metrics_text(settle_s=0.5),
                                         "rlhf_model_swap_failures_total") >= 1)
    assert served(stack) == current and gen(stack).model_version == current
    with pytest.raises(grpc.RpcError) as err:
        gen(stack, model_version=bad)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    point_at(stack.settings, current)


def test_rollback_to_the_base(stack):
    point_at(stack.settings, stack.v1)
    assert wait_for(lambda: served(stack) == stack.v1)
    assert gen(stack).model_version == stack.v1
