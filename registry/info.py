"""ModelInfo (the API's view of a version) from a registry manifest; LiveServer from a heartbeat."""

from __future__ import annotations

from rlhf.v1 import admin_pb2, policy_pb2, records_pb2


def model_info(manifest: records_pb2.ModelManifest, current: str | None) -> policy_pb2.ModelInfo:
    info = policy_pb2.ModelInfo(
        model_version=manifest.version,
        parent_version=manifest.parent_version,
        base_model=manifest.base_model,
        current=manifest.version == current,
        pointer_version=current or "",
    )
    info.published_at.CopyFrom(manifest.created_at)
    info.training.CopyFrom(manifest.training)
    info.promotion.CopyFrom(manifest.promotion)
    return info


def live_server(heartbeat: dict) -> admin_pb2.LiveServer:
    """A LiveServer from a heartbeat record (service/heartbeat.py)."""
    server = admin_pb2.LiveServer(
        server_id=heartbeat.get("server_id", ""), host=heartbeat.get("host", ""),
        model_version=heartbeat.get("model_version", ""), pointer_version=heartbeat.get("pointer_version", ""),
        fallback=bool(heartbeat.get("fallback")), refused_reason=heartbeat.get("refused_reason", ""))
    server.started_at.FromNanoseconds(int(heartbeat.get("started", 0) * 1e9))
    server.last_heartbeat.FromNanoseconds(int(heartbeat.get("at", 0) * 1e9))
    return server
