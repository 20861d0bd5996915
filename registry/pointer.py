"""The current-version pointer, kept in Redis, and its announcement over pub/sub."""

from __future__ import annotations

import json
import time

import redis

from registry.registry import Registry, VersionNotFound
from rlhf_serve.keys import Keys


def current_version(r: redis.Redis, keys: Keys, registry: Registry) -> str | None:
    """The pointer, or (when Redis lost it) the newest promoted version, which is re-set."""
    value = r.get(keys.current_version)
    if value:
        return value.decode() if isinstance(value, bytes) else value
    fallback = registry.latest_promoted()
    if fallback:
        r.set(keys.current_version, fallback, nx=True)
    return fallback


def set_current(r: redis.Redis, keys: Keys, registry: Registry, version: str, action: str) -> str | None:
    """Moves the pointer to `version` (which must exist and verify) and announces it.

    Returns the previous version. Every serving process subscribed to the channel hot-swaps.
    """
    if not registry.exists(version):
        raise VersionNotFound(version)
    registry.verify(version)
    previous = r.getset(keys.current_version, version)
    previous = previous.decode() if isinstance(previous, bytes) else previous
    entry = {"action": action, "version": version, "previous": previous, "at": time.time()}
    pipe = r.pipeline()
    pipe.lpush(keys.model_history, json.dumps(entry))
    pipe.ltrim(keys.model_history, 0, 999)
    pipe.publish(keys.model_events, version)
    pipe.execute()
    return previous
