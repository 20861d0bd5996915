"""Registry retention policy (pure): what is kept, with the reason, and what is deleted."""

from __future__ import annotations

from registry.retention import VersionNode, plan_retention


def chain(spec: str) -> dict[str, VersionNode]:
    """'v1<-v2+ v2<-v3-' style: name, parent and + promoted / - refused; v0001 is the SFT reference."""
    nodes = {}
    for item in spec.split():
        parent, rest = item.split("<-") if "<-" in item else ("", item)
        name, promoted = rest[:-1], rest[-1] == "+"
        nodes[name] = VersionNode(parent=parent, reference="v01" if parent else name, promoted=promoted)
    return nodes


def naive_keep(nodes, current, keep_refused):
    """The policy written out the slow way."""
    keep, v = {current}, current
    while v and v in nodes:
        keep.add(v)
        v = nodes[v].parent
    keep.add(nodes[current].reference)
    keep |= set(sorted(n for n in nodes if not nodes[n].promoted)[::-1][:keep_refused])
    keep.add(max(nodes))
    return keep


HISTORY = chain("v01+ v01<-v02+ v02<-v03- v02<-v04+ v04<-v05- v04<-v06- v04<-v07+ v07<-v08- v07<-v09-")


def test_keeps_current_ancestors_reference_and_newest_refused():
    plan = plan_retention(HISTORY, "v07", keep_refused=2)
    assert plan.keep == {"v07": "current", "v01": "SFT reference of the current version",
                         "v04": "ancestor of the current version", "v02": "ancestor of the current version",
                         "v08": "one of the 2 newest refused", "v09": "one of the 2 newest refused"}
    assert plan.delete == ["v03", "v05", "v06"]


def test_matches_the_naive_policy_for_every_current_and_n():
    for current in HISTORY:
        for n in range(0, 7):
            plan = plan_retention(HISTORY, current, n)
            assert set(plan.keep) == naive_keep(HISTORY, current, n), (current, n)
            assert sorted(plan.delete) == sorted(set(HISTORY) - set(plan.keep))


def test_after_a_rollback_the_abandoned_branch_goes_but_the_newest_stays():
    plan = plan_retention(HISTORY, "v02", keep_refused=0)
    assert plan.delete == ["v03", "v04", "v05", "v06", "v07", "v08"]
    assert plan.keep["v09"].startswith("newest version")  # its number must not be reused


def test_no_current_pointer_deletes_nothing():
    assert plan_retention(HISTORY, None, 0).delete == []
    assert plan_retention(HISTORY, "v99", 0).delete == []
    assert plan_retention({}, None, 3).delete == []
