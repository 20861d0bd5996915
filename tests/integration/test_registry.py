"""The model registry on disk: atomic numbered versions, checksummed manifests, verify()."""

from __future__ import annotations

import json
import threading

import pytest

from registry import ChecksumError, Registry, VersionNotFound
from registry.registry import sha256_file
from tests.helpers import publish_model


def test_versions_are_numbered_and_complete(tmp_path, tiny_model_dir):
    reg = Registry(tmp_path / "reg")
    assert reg.list_versions() == [] and reg.latest_promoted() is None
    v1 = publish_model(reg, tiny_model_dir, description="first")
    v2 = publish_model(reg, tiny_model_dir, parent=v1, promoted=False)
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.list_versions() == ["v0001", "v0002"]
    assert reg.latest_promoted() == "v0001"  # v0002 was not promoted
    m = reg.manifest(v2)
    assert m.version == "v0002" and m.parent_version == "v0001" and m.reference_version == "v0001"
    assert reg.manifest(v1).reference_version == "v0001"
    assert m.created_at.seconds > 0
    # the manifest lists every file of the source directory with its checksum and size
    src_files = sorted(str(p.relative_to(tiny_model_dir)) for p in tiny_model_dir.rglob("*") if p.is_file())
    assert sorted(f.path for f in m.files) == src_files
    assert any(f.path.endswith(".safetensors") for f in m.files)
    for f in m.files:
        path = reg.path(v2) / f.path
        assert sha256_file(path) == f.sha256 and path.stat().st_size == f.size
    assert json.loads((reg.path(v2) / "manifest.json").read_text())["version"] == "v0002"
    assert reg.verify(v2).version == "v0002"
    # nothing is left in the staging area
    assert not any(reg.tmp_dir.iterdir())
    with pytest.raises(VersionNotFound):
        reg.manifest("v0042")


def test_concurrent_publishers_get_distinct_versions(tmp_path, tiny_model_dir):
    reg = Registry(tmp_path / "reg")
    got, errors = [], []

    def pub():
        try:
            got.append(publish_model(Registry(reg.root), tiny_model_dir))
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=pub) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(got) == ["v0001", "v0002", "v0003", "v0004"]
    for v in got:
        reg.verify(v)


def test_incomplete_directory_is_not_a_version(tmp_path, tiny_model_dir):
    reg = Registry(tmp_path / "reg")
    publish_model(reg, tiny_model_dir)
    (reg.versions_dir / "v0002").mkdir()  # e.g. a crashed copy without manifest
    (reg.versions_dir / "v0002" / "config.json").write_text("{}")
    assert reg.list_versions() == ["v0001"] and not reg.exists("v0002")
    # the next publish skips the taken number instead of overwriting it
    assert publish_model(reg, tiny_model_dir) == "v0003"


def test_failed_publish_leaves_nothing(tmp_path):
    reg = Registry(tmp_path / "reg")
    from rlhf.v1 import records_pb2
    with pytest.raises(Exception):
        reg.publish(tmp_path / "does-not-exist", records_pb2.ModelManifest())
    assert reg.list_versions() == [] and not any(reg.tmp_dir.iterdir())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_detects_corruption(tmp_path, tiny_model_dir, damage):
    reg = Registry(tmp_path / "reg")
    v = publish_model(reg, tiny_model_dir)
    weights = next(reg.path(v).glob("*.safetensors"))
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-10])
    else:
        weights.unlink()
    with pytest.raises(ChecksumError, match=weights.name):
        reg.verify(v)
