"""The model registry: immutable version directories plus a current-version pointer in Redis."""

from registry.registry import ChecksumError, Registry, VersionNotFound

__all__ = ["ChecksumError", "Registry", "VersionNotFound"]
