"""Invariants of the deployment artefacts (run by scripts/check_deploy.sh).

    python scripts/check_deploy.py <dir of kustomize outputs: root.yaml cpu.yaml gpu.yaml ...>

Without kustomize outputs it only checks that every YAML file under k8s/ parses.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)


def load(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def parse_all() -> None:
    for path in sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml")):
        try:
            docs = load(path)
        except yaml.YAMLError as exc:
            fail(f"{path.relative_to(ROOT)}: does not parse: {exc}")
            continue
        for d in docs:
            if d.get("kind") and (d.get("metadata") or {}).get("namespace"):
                fail(f"{path.relative_to(ROOT)}: {d['kind']} sets metadata.namespace (manifests are namespace-agnostic)")


def objects(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec") or {}
    if obj["kind"] == "StatefulSet" or obj["kind"] == "Deployment" or obj["kind"] == "Job":
        return spec["template"]["spec"]
    return None


def check_pods(name: str, objs: dict) -> None:
    """Pod Security "restricted" + read-only root everywhere."""
    for (kind, oname), obj in objs.items():
        pod = pod_spec(obj)
        if pod is None:
            continue
        where = f"{name}: {kind}/{oname}"
        psc = pod.get("securityContext") or {}
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(f"{where}: pod securityContext.seccompProfile must be RuntimeDefault")
        if not psc.get("runAsNonRoot"):
            fail(f"{where}: pod must set runAsNonRoot")
        if pod.get("automountServiceAccountToken") is not False:
            fail(f"{where}: automountServiceAccountToken must be false (no pod talks to the API)")
        for c in pod["containers"] + pod.get("initContainers", []):
            csc = c.get("securityContext") or {}
            if csc.get("allowPrivilegeEscalation") is not False or csc.get("readOnlyRootFilesystem") is not True:
                fail(f"{where}/{c['name']}: needs allowPrivilegeEscalation false and readOnlyRootFilesystem true")
            if (csc.get("capabilities") or {}).get("drop") != ["ALL"]:
                fail(f"{where}/{c['name']}: must drop ALL capabilities")
            if ":" not in c["image"]:
                fail(f"{where}/{c['name']}: image {c['image']} has no tag")
            secret_refs = [e for e in c.get("envFrom", []) if "secretRef" in e]
            if any(e["secretRef"].get("optional") for e in secret_refs):
                fail(f"{where}/{c['name']}: the Secret rlhf-serve-secrets must be required")


def queues(obj: dict) -> set[str]:
    args = obj["spec"]["template"]["spec"]["containers"][0]["args"]
    return set(args[args.index("-Q") + 1].split(",")) if "-Q" in args else set()


def check_overlay(name: str, docs: list[dict], gpu: bool) -> None:
    objs = objects(docs)
    check_pods(name, objs)
    workers = {k: v for k, v in objs.items() if k[0] == "Deployment" and k[1].startswith("rlhf-serve-worker")}
    consumed = set().union(*(queues(w) for w in workers.values())) if workers else set()
    if consumed != {"default", "gpu"}:
        fail(f"{name}: workers consume {sorted(consumed)}; both `default` and `gpu` need a consumer")
    gpu_worker = objs.get(("Deployment", "rlhf-serve-worker-gpu"))
    if gpu and gpu_worker:
        pod = gpu_worker["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if not c["image"].endswith("-cuda"):
            fail(f"{name}: the GPU worker must run the CUDA image, not {c['image']}")
        if env.get("RLHF_DEVICE") != "cuda" or str(c["resources"]["limits"].get("nvidia.com/gpu")) != "1":
            fail(f"{name}: the GPU worker needs RLHF_DEVICE=cuda and nvidia.com/gpu: 1")
        if not pod.get("nodeSelector") or not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
            fail(f"{name}: the GPU worker needs a nodeSelector and the nvidia.com/gpu toleration")
        if queues(gpu_worker) != {"gpu"}:
            fail(f"{name}: the GPU worker must consume only `gpu`")
    elif gpu:
        fail(f"{name}: no rlhf-serve-worker-gpu Deployment")
    elif gpu_worker:
        fail(f"{name}: a CPU deploy must not have a GPU worker (it would stay Pending)")
    for (kind, oname), obj in objs.items():
        if kind in ("Deployment", "StatefulSet", "Job") and oname != "redis":
            for c in obj["spec"]["template"]["spec"]["containers"]:
                if "cuda" in c["image"] and oname != "rlhf-serve-worker-gpu":
                    fail(f"{name}: {oname} runs the CUDA image")
    check_common(name, objs)


def check_common(name: str, objs: dict) -> None:
    beat = objs.get(("Deployment", "rlhf-serve-beat"))
    if not beat or beat["spec"].get("replicas") != 1 or beat["spec"].get("strategy", {}).get("type") != "Recreate":
        fail(f"{name}: beat must have exactly 1 replica and strategy Recreate")
    pvc = objs.get(("PersistentVolumeClaim", "rlhf-registry"))
    if not pvc or "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
        fail(f"{name}: the registry volume must be ReadWriteMany")
    server = objs.get(("Deployment", "rlhf-serve"))
    if not server:
        return fail(f"{name}: Deployment rlhf-serve missing")
    c = server["spec"]["template"]["spec"]["containers"][0]
    ports = {p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if (c.get(probe) or {}).get("grpc", {}).get("port") not in ports:
            fail(f"{name}: server {probe} must be a grpc probe on one of its ports")
    if server["spec"]["strategy"]["rollingUpdate"].get("maxUnavailable") != 0:
        fail(f"{name}: server rollingUpdate.maxUnavailable must be 0")
    redis = objs.get(("StatefulSet", "redis"))
    if redis:
        args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        for flag, value in (("--maxmemory-policy", "noeviction"), ("--requirepass", "$(REDIS_PASSWORD)")):
            if flag not in args or args[args.index(flag) + 1] != value:
                fail(f"{name}: redis needs {flag} {value}")
        if "--maxmemory" not in args:
            fail(f"{name}: redis needs --maxmemory (below its memory limit)")
        if ("NetworkPolicy", "redis") not in objs:
            fail(f"{name}: no NetworkPolicy guarding Redis")


def check_rules_and_dashboard() -> None:
    plain = yaml.safe_load((K8S / "alerts" / "rlhf-serve-rules.yml").read_text())["groups"]
    crd = yaml.safe_load((K8S / "monitoring" / "prometheus-rules.yaml").read_text())["spec"]["groups"]
    if plain != crd:
        fail("k8s/monitoring/prometheus-rules.yaml: spec.groups differ from k8s/alerts/rlhf-serve-rules.yml")
    source = "".join(p.read_text() for d in ("service", "workers") for p in (ROOT / d).glob("*.py"))
    dash = json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\b(?:rlhf|grpc_server)_\w+", e)}
    for metric in sorted(names):
        if f'"{metric}"' not in source:
            fail(f"grafana-dashboard.json: {metric} is not a metric of service/ or workers/")
    print(f"  ok  dashboard: {len(exprs)} queries over {len(names)} metrics")


def check_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for pattern in (r"^USER 10001", r"^EXPOSE 50051 9090", r'^ENTRYPOINT \["rlhf-serve"\]', r'^CMD \["serve"\]',
                    r"grpc_tools\.protoc", r"-c constraints\.txt \.", r"^ARG VARIANT=cpu", r"^FROM torch-\$\{VARIANT\}",
                    r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-"):
        if not re.search(pattern, text, re.M):
            fail(f"Dockerfile: no line matching {pattern}")
    if "rlhf" not in (ROOT / ".dockerignore").read_text().split():
        fail(".dockerignore: must exclude the generated rlhf/")
    if re.search(r"^torch[=<>]", (ROOT / "constraints.txt").read_text(), re.M):
        fail("constraints.txt: torch is pinned by the Dockerfile's TORCH_VERSION (CPU and CUDA builds differ)")


def main(built: pathlib.Path | None) -> int:
    parse_all()
    check_dockerfile()
    check_rules_and_dashboard()
    if built and (built / "root.yaml").is_file():
        for name, gpu in (("root", False), ("cpu", False), ("gpu", True), ("all-components", True)):
            check_overlay(name, load(built / f"{name}.yaml"), gpu)
            print(f"  ok  {name}")
    else:
        print("  (no kustomize output: only parsed the YAML files)")
    if errors:
        print("\n".join("  FAIL " + e for e in errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None))
