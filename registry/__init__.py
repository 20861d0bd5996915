"""The model registry: immutable version directories plus a current-version pointer in Redis."""

from registry.registry import ChecksumError, InvalidVersionName, Registry, VersionNotFound, is_version_name

__all__ = ["ChecksumError", "InvalidVersionName", "Registry", "VersionNotFound", "is_version_name"]
