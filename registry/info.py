"""ModelInfo (the API's view of a version) from a registry manifest."""

from __future__ import annotations

from rlhf.v1 import policy_pb2, records_pb2


def model_info(manifest: records_pb2.ModelManifest, current: str | None) -> policy_pb2.ModelInfo:
    info = policy_pb2.ModelInfo(
        model_version=manifest.version,
        parent_version=manifest.parent_version,
        base_model=manifest.base_model,
        current=manifest.version == current,
    )
    info.published_at.CopyFrom(manifest.created_at)
    info.training.CopyFrom(manifest.training)
    info.promotion.CopyFrom(manifest.promotion)
    return info
