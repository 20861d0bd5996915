"""Registry retention: which model versions to keep, and deleting the rest.

Every training round publishes a full version, promoted or not, so without cleanup the registry
volume only grows. The policy (`plan_retention`, pure) keeps:

- the current version (the Redis pointer),
- its ancestors along `parent_version`, back to and including its SFT reference (what a rollback
  goes back to, and what PPO's KL penalty needs),
- the `keep_refused` newest refused (not promoted) versions, for diagnosis,
- the newest version of all (version numbers come from the names on disk: deleting the newest
  would let the next publish reuse its name),

and deletes every other version. Without a current pointer it deletes nothing.
`prune` applies a plan: each directory is first renamed into `.tmp/` (atomic: a reader sees the
version complete or absent), then removed.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field

import redis

from registry.registry import Registry
from rlhf_core.keys import Keys


@dataclass(frozen=True)
class VersionNode:
    """What retention needs from a manifest."""

    parent: str
    reference: str
    promoted: bool


@dataclass
class RetentionPlan:
    keep: dict[str, str] = field(default_factory=dict)  # version -> why it is kept
    delete: list[str] = field(default_factory=list)     # oldest first


def plan_retention(versions: dict[str, VersionNode], current: str | None, keep_refused: int) -> RetentionPlan:
    """Pure: the versions to keep (with the reason) and the ones to delete."""
    names = sorted(versions)
    if not current or current not in versions:
        return RetentionPlan(keep={v: "no current version: nothing is deleted" for v in names})
    keep: dict[str, str] = {current: "current"}
    reference = versions[current].reference
    if reference in versions:
        keep.setdefault(reference, "SFT reference of the current version")
    version, seen = current, set()
    while version in versions and version not in seen:  # parent chain back to the reference
        seen.add(version)
        keep.setdefault(version, "ancestor of the current version")
        node = versions[version]
        if version == node.reference or not node.parent:
            break
        version = node.parent
    refused = [v for v in names if not versions[v].promoted]
    for v in refused[-keep_refused:] if keep_refused > 0 else []:
        keep.setdefault(v, f"one of the {keep_refused} newest refused")
    keep.setdefault(names[-1], "newest version (its number must not be reused)")
    return RetentionPlan(keep=keep, delete=[v for v in names if v not in keep])


def read_nodes(registry: Registry) -> dict[str, VersionNode]:
    nodes = {}
    for version in registry.list_versions():
        try:
            m = registry.manifest(version)
        except Exception:  # noqa: BLE001
            continue  # unreadable manifest: never delete what we cannot judge
        nodes[version] = VersionNode(m.parent_version, m.reference_version or version, m.promotion.promoted)
    return nodes


def prune(registry: Registry, r: redis.Redis, keys: Keys, keep_refused: int, dry_run: bool = False) -> RetentionPlan:
    """Computes the plan from the registry and the pointer; deletes unless `dry_run`."""
    current = r.get(keys.current_version)
    plan = plan_retention(read_nodes(registry), current.decode() if current else None, keep_refused)
    if dry_run:
        return plan
    deleted = []
    for version in plan.delete:
        now = r.get(keys.current_version)
        if now and now.decode() == version:  # promoted meanwhile: keep it
            plan.keep[version] = "became current during the prune"
            continue
        _delete(registry, version)
        deleted.append(version)
    plan.delete = deleted
    return plan


def _delete(registry: Registry, version: str) -> None:
    registry.tmp_dir.mkdir(parents=True, exist_ok=True)
    trash = registry.tmp_dir / f"deleted-{version}-{uuid.uuid4().hex[:8]}"
    try:
        (registry.versions_dir / version).rename(trash)
    except FileNotFoundError:
        return  # already gone
    shutil.rmtree(trash, ignore_errors=True)
