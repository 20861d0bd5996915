"""The current-version lookup, sync (CLI, workers) and asyncio (the server's watcher), on real Redis:
the pointer and its epoch; a pointer Redis lost falls back to the newest promoted version, re-set."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

from registry import Registry
from registry.pointer import current_version, lookup_pointer, lookup_pointer_async
from rlhf_core.keys import Keys
from tests.helpers import publish_model, register_v1


def both_lookups(settings, registry: Registry) -> tuple[tuple, tuple]:
    keys = Keys(settings.key_prefix)

    async def lookup_async():
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await lookup_pointer_async(client, keys, registry)
        finally:
            await client.aclose()
    return lookup_pointer(redis.Redis.from_url(settings.redis_url), keys, registry), asyncio.run(lookup_async())


def test_the_pointer_and_its_epoch(settings, tiny_model_dir):
    v1 = register_v1(settings, tiny_model_dir)
    registry = Registry(settings.registry)
    sync, from_async = both_lookups(settings, registry)
    assert sync == from_async == (v1, 1)


def test_a_lost_pointer_falls_back_to_the_newest_promoted_version(settings, tiny_model_dir):
    registry = Registry(settings.registry)
    keys, r = Keys(settings.key_prefix), redis.Redis.from_url(settings.redis_url)
    assert current_version(r, keys, registry) is None  # nothing registered: nothing to serve
    v1 = publish_model(registry, tiny_model_dir)
    v2 = publish_model(registry, tiny_model_dir, parent=v1)
    publish_model(registry, tiny_model_dir, parent=v2, promoted=False)  # refused: never the fallback
    sync, from_async = both_lookups(settings, registry)
    assert sync == from_async == (v2, 0)
    assert r.get(keys.current_version) == v2.encode()  # re-set
    r.delete(keys.current_version)
    assert both_lookups(settings, registry)[1] == (v2, 0) and r.get(keys.current_version) == v2.encode()
