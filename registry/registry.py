"""A directory of immutable model versions.

Layout (`root` is `RLHF_REGISTRY`):

    root/versions/v0001/            a Hugging Face directory (config, safetensors, tokenizer)
    root/versions/v0001/manifest.json   `rlhf.v1.ModelManifest` as JSON: checksums, parent, ...
    root/.tmp/                      versions being written (never read by anyone)

A version is written into `.tmp/` and renamed into `versions/` in one step, so a version
directory is complete or absent. Versions are never modified afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from rlhf.v1 import records_pb2

MANIFEST = "manifest.json"


class VersionNotFound(KeyError):
    """The registry has no such version."""


class ChecksumError(RuntimeError):
    """A version's files do not match its manifest (corrupt or tampered weights)."""


class InvalidVersionName(ValueError):
    """A string that is not a name this registry issues (`v` + 4 to 12 ASCII digits)."""


VERSION_RE = re.compile(r"v[0-9]{4,12}")


def version_name(number: int) -> str:
    return f"v{number:04d}"


def is_version_name(name) -> bool:
    """True for names `version_name` issues. Checked before any filesystem access, so that no
    client string (absolute paths, `../`, `v0001/`, ...) ever becomes part of a path."""
    return isinstance(name, str) and VERSION_RE.fullmatch(name) is not None


def check_version_name(name) -> str:
    if not is_version_name(name):
        shown = name if isinstance(name, str) and len(name) <= 40 else f"{str(name)[:40]}..."
        raise InvalidVersionName(f"{shown!r} is not a version name; names look like v0001 (v and digits)")
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


class Registry:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.tmp_dir = self.root / ".tmp"

    # --- read side ---------------------------------------------------------------------------
    def list_versions(self) -> list[str]:
        """Every complete version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if is_version_name(p.name) and (p / MANIFEST).is_file()]
        return sorted(names, key=lambda n: int(n[1:]))

    def exists(self, version: str) -> bool:
        """False for names the registry does not issue (without touching the disk)."""
        return is_version_name(version) and (self.versions_dir / version / MANIFEST).is_file()

    def path(self, version: str) -> Path:
        """The version's directory. Raises InvalidVersionName (malformed) or VersionNotFound."""
        check_version_name(version)
        if not self.exists(version):
            raise VersionNotFound(version)
        return self.versions_dir / version

    def manifest(self, version: str) -> records_pb2.ModelManifest:
        path = self.path(version) / MANIFEST
        return json_format.Parse(path.read_text(), records_pb2.ModelManifest())

    def latest_promoted(self) -> str | None:
        """The newest version whose gate promoted it (the fallback when no pointer is set)."""
        for version in reversed(self.list_versions()):
            if self.manifest(version).promotion.promoted:
                return version
        return None

    def ancestors(self, version: str) -> list[str]:
        """The parent chain of a version, nearest first (registered ones only; cycles cut)."""
        chain, seen = [], {version}
        parent = self.manifest(version).parent_version if self.exists(version) else ""
        while parent and parent not in seen and self.exists(parent):
            chain.append(parent)
            seen.add(parent)
            parent = self.manifest(parent).parent_version
        return chain

    def fingerprint(self, version: str) -> tuple | None:
        """(name, size, mtime) of every file of a version: changes when its files change.
        None when the version does not exist. Cheap (stat only), for retry decisions."""
        if not self.exists(version):
            return None
        base = self.versions_dir / version
        try:
            return tuple(sorted((str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns)
                                for p in base.rglob("*") if p.is_file()))
        except OSError:
            return None

    def verify(self, version: str) -> records_pb2.ModelManifest:
        """Checks every file against the manifest; raises ChecksumError on any mismatch."""
        manifest = self.manifest(version)
        base = self.path(version)
        for entry in manifest.files:
            file = base / entry.path
            if not file.is_file():
                raise ChecksumError(f"{version}: {entry.path} is missing")
            if file.stat().st_size != entry.size or sha256_file(file) != entry.sha256:
                raise ChecksumError(f"{version}: {entry.path} does not match its checksum")
        return manifest

    # --- write side --------------------------------------------------------------------------
    def publish(self, src_dir: Path | str, manifest: records_pb2.ModelManifest) -> records_pb2.ModelManifest:
        """Copies a Hugging Face directory in as the next version; returns its manifest.

        `manifest` carries parent, training summary, promotion decision and base model; version,
        creation time and checksums are filled in here.
        """
        src_dir = Path(src_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="publish-", dir=self.tmp_dir))
        try:
            out = self._stage(src_dir, staging, manifest)
            return self._commit(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, src_dir: Path, staging: Path, manifest: records_pb2.ModelManifest):
        out = records_pb2.ModelManifest()
        out.CopyFrom(manifest)
        del out.files[:]
        body = staging / "model"
        shutil.copytree(src_dir, body, ignore=shutil.ignore_patterns(MANIFEST))
        for file in sorted(p for p in body.rglob("*") if p.is_file()):
            out.files.add(path=str(file.relative_to(body)), sha256=sha256_file(file),
                          size=file.stat().st_size)
        out.created_at.CopyFrom(now_timestamp())
        return out

    def _commit(self, staging: Path, out: records_pb2.ModelManifest) -> records_pb2.ModelManifest:
        body = staging / "model"
        for _ in range(1000):
            existing = self._taken_names()
            number = 1 + max((int(n[1:]) for n in existing), default=0)
            out.version = version_name(number)
            if not out.reference_version:
                out.reference_version = out.version
            (body / MANIFEST).write_text(json_format.MessageToJson(out, indent=1))
            _fsync_tree(body)
            try:
                os.rename(body, self.versions_dir / out.version)  # atomic; fails if taken
                return out
            except OSError:
                continue  # another publisher took this number: try the next
        raise RuntimeError("could not allocate a version number")

    def _taken_names(self) -> list[str]:
        """Every vNNNN name under versions/ (complete or not), to allocate the next number."""
        if not self.versions_dir.is_dir():
            return []
        return [p.name for p in self.versions_dir.iterdir() if is_version_name(p.name)]


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
