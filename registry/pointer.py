"""The current-version pointer, kept in Redis, and its announcement over pub/sub.

The pointer (and its epoch, a counter bumped on every move) lives in the deployment's own
database under its key prefix. Pub/sub channels are global to a Redis server, so the
announcement goes out on a channel named after the prefix *and* the database number, and it is
only a hint: a serving process that hears anything reads the pointer from its own database.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

import redis

from registry.registry import Registry, VersionNotFound, check_version_name
from rlhf_core.keys import Keys


def redis_db(client) -> int:
    """The database number a (sync or asyncio) redis-py client talks to."""
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def events_channel(client, keys: Keys) -> str:
    """This deployment's model-events channel (key prefix + database number)."""
    return keys.model_events_channel(redis_db(client))


def _text(value) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# The pointer lookup, for sync and asyncio clients: MGET pointer + epoch; when Redis lost the pointer,
# the newest promoted version is the answer and is re-set (NX: a pointer set meanwhile wins).

def lookup_pointer(r: redis.Redis, keys: Keys, registry: Registry) -> tuple[str | None, int]:
    """(version, epoch): the pointer, or (when Redis lost it) the newest promoted version, re-set."""
    value, epoch = r.mget(keys.current_version, keys.pointer_epoch)
    if value:
        return _text(value), int(epoch or 0)
    fallback = registry.latest_promoted()
    if fallback:
        r.set(keys.current_version, fallback, nx=True)
    return fallback, int(epoch or 0)


async def lookup_pointer_async(r, keys: Keys, registry: Registry) -> tuple[str | None, int]:
    """:func:`lookup_pointer` on an asyncio client; the registry read runs off the event loop."""
    value, epoch = await r.mget(keys.current_version, keys.pointer_epoch)
    if value:
        return _text(value), int(epoch or 0)
    fallback = await asyncio.get_running_loop().run_in_executor(None, registry.latest_promoted)
    if fallback:
        await r.set(keys.current_version, fallback, nx=True)
    return fallback, int(epoch or 0)


def current_version(r: redis.Redis, keys: Keys, registry: Registry) -> str | None:
    """The pointer, or (when Redis lost it) the newest promoted version, which is re-set."""
    return lookup_pointer(r, keys, registry)[0]


def default_probe(registry: Registry) -> Callable[[str], object]:
    from registry.probe import probe_version  # torch/transformers only when a probe runs
    return lambda version: probe_version(registry, version)


def set_current(r: redis.Redis, keys: Keys, registry: Registry, version: str, action: str,
                probe: Callable[[str], object] | None = None) -> str | None:
    """Moves the pointer to `version` and announces it; returns the previous version.

    The version must be well named, registered, match its checksums and pass `probe` (default:
    load it on CPU and run one forward pass) before the pointer moves. Raises
    InvalidVersionName, VersionNotFound, ChecksumError or registry.probe.UnloadableVersion.
    """
    check_version_name(version)
    if not registry.exists(version):
        raise VersionNotFound(version)
    registry.verify(version)
    (probe or default_probe(registry))(version)
    pipe = r.pipeline()
    pipe.getset(keys.current_version, version)
    pipe.incr(keys.pointer_epoch)
    previous, epoch = pipe.execute()
    previous = _text(previous)
    entry = {"action": action, "version": version, "previous": previous, "epoch": epoch, "at": time.time()}
    pipe = r.pipeline()
    pipe.lpush(keys.model_history, json.dumps(entry))
    pipe.ltrim(keys.model_history, 0, 999)
    pipe.publish(events_channel(r, keys), version)
    pipe.execute()
    return previous
