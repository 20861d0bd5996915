"""A LoRA round end to end: feedback -> Celery round (RLHF_FINETUNE=lora) -> adapter version -> hot-swap."""

from __future__ import annotations

import pytest

from registry import Registry
from rlhf.v1 import admin_pb2, policy_pb2
from tests.e2e.conftest import stream_stats, wait_for
from tests.e2e.test_training_loop import Traffic, current_version, give_feedback
from tests.helpers import metric_value
from training.text_format import train_prompts

pytestmark = pytest.mark.timeout(900)


def test_lora_round_publishes_an_adapter_on_the_shared_base(server, settings, start_worker):
    worker = start_worker(RLHF_FINETUNE="lora", RLHF_GATE_MIN_REWARD_GAIN="-1e9",
                          RLHF_ROUND_LOCK_TTL_S="30")  # torch imports between stages are slow on a busy machine
    submitted = give_feedback(server, train_prompts()[:12])
    traffic = Traffic(server)
    server.admin.TriggerRound(admin_pb2.TriggerRoundRequest(force=True))
    wait_for(lambda: worker.alive() and current_version(server) == "v0002", 300, 0.5, "hot-swap to v0002")
    wait_for(lambda: traffic.versions[-3:] == ["v0002"] * 3, 60, what="new requests on v0002")
    traffic.finish()
    assert traffic.errors == []
    manifest = Registry(settings.registry).manifest("v0002")
    assert manifest.adapter_base_version == "v0001" and manifest.training.finetune == "lora"
    files = {f.path: f.size for f in manifest.files}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    base_size = sum(f.size for f in Registry(settings.registry).manifest("v0001").files)
    assert sum(files.values()) < base_size  # an adapter (+ tokenizer), not a copy of the weights
    assert 0 < manifest.training.trainable_parameters
    info = server.policy.GetModel(policy_pb2.GetModelRequest())
    assert info.parent_version == "v0001" and info.training.num_comparisons == submitted
    assert stream_stats(settings)["pending"] == 0
    text = server.metrics_text()
    assert metric_value(text, "rlhf_model_base_copies") == 1
    assert metric_value(text, "rlhf_model_last_load_bytes") > 0
