#!/usr/bin/env bash
# Checks the deployment artefacts without a cluster or docker:
#   1. fetches promtool into .tools/ when it is not on PATH (Debian's `prometheus` package),
#   2. promtool check rules + promtool test rules on k8s/alerts/,
#   3. every YAML document under k8s/ parses and has apiVersion, kind and metadata.name;
#      kustomization resources exist; prometheus-rules.yaml matches the plain rule file,
#   4. light sanity checks of the Dockerfile.
# Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
PY=${PYTHON:-$ROOT/.venv/bin/python}

step() { printf '\n== %s\n' "$*"; }

# --- 1. promtool -----------------------------------------------------------------------------
step "promtool"
if [[ -n "${PROMTOOL:-}" ]]; then :
elif command -v promtool >/dev/null 2>&1; then PROMTOOL=$(command -v promtool)
elif [[ -x $TOOLS/promtool ]]; then PROMTOOL=$TOOLS/promtool
else
  echo "promtool not found: fetching Debian's prometheus package into $TOOLS"
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { echo "need apt-get and dpkg-deb to fetch promtool (or set PROMTOOL=...)" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || {
    echo "apt-get download prometheus failed (try: apt-get update)" >&2; exit 1; }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$TOOLS"
  cp "$tmp/x/usr/bin/promtool" "$TOOLS/promtool"
  chmod +x "$TOOLS/promtool"
  PROMTOOL=$TOOLS/promtool
fi
"$PROMTOOL" --version 2>&1 | head -1

# --- 2. alerting rules -----------------------------------------------------------------------
step "promtool check rules k8s/alerts/rlhf-serve-rules.yml"
"$PROMTOOL" check rules k8s/alerts/rlhf-serve-rules.yml
step "promtool test rules k8s/alerts/tests.yml"
"$PROMTOOL" test rules k8s/alerts/tests.yml

# --- 3. Kubernetes manifests ------------------------------------------------------------------
step "YAML documents under k8s/"
[[ -x $PY ]] || PY=python3
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  if [[ -x $ROOT/.venv/bin/pip ]]; then "$ROOT/.venv/bin/pip" install -q pyyaml; PY=$ROOT/.venv/bin/python
  else echo "PyYAML missing (pip install pyyaml)" >&2; exit 1; fi
fi
"$PY" - <<'PYEOF'
import pathlib, sys
import yaml

root = pathlib.Path("k8s")
errors, count = [], 0
plain_rule_files = {root / "alerts" / "rlhf-serve-rules.yml", root / "alerts" / "tests.yml"}
files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
for path in files:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        errors.append(f"{path}: does not parse: {exc}")
        continue
    if not docs:
        errors.append(f"{path}: no YAML document")
    if path in plain_rule_files:  # Prometheus files, not Kubernetes objects
        count += len(docs)
        continue
    for i, doc in enumerate(docs):
        count += 1
        where = f"{path} (document {i + 1})"
        if not isinstance(doc, dict):
            errors.append(f"{where}: not a mapping")
            continue
        for key in ("apiVersion", "kind"):
            if not doc.get(key):
                errors.append(f"{where}: missing {key}")
        if not (doc.get("metadata") or {}).get("name"):
            errors.append(f"{where}: missing metadata.name")
        if (doc.get("metadata") or {}).get("namespace"):
            errors.append(f"{where}: sets metadata.namespace (manifests are namespace-agnostic)")
        kind = doc.get("kind")
        spec = doc.get("spec") or {}
        if kind in ("Deployment", "StatefulSet"):
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                errors.append(f"{where}: selector {sel} does not match template labels {labels}")
        print(f"  ok  {path}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}")

# kustomization: every resource exists
kust = yaml.safe_load((root / "kustomization.yaml").read_text())
for res in kust.get("resources", []):
    if not (root / res).exists():
        errors.append(f"kustomization.yaml: resource {res} does not exist")

# the PrometheusRule carries exactly the groups of the plain rule file
plain = yaml.safe_load((root / "alerts" / "rlhf-serve-rules.yml").read_text())["groups"]
crd = yaml.safe_load((root / "prometheus-rules.yaml").read_text())["spec"]["groups"]
if plain != crd:
    errors.append("k8s/prometheus-rules.yaml: spec.groups differ from k8s/alerts/rlhf-serve-rules.yml")

# deployment invariants the service relies on
docs = {}
for path in files:
    if path not in plain_rule_files:
        for d in yaml.safe_load_all(path.read_text()):
            if isinstance(d, dict):
                docs[(d.get("kind"), d["metadata"]["name"])] = d
beat = docs.get(("Deployment", "rlhf-serve-beat"))
if not beat or beat["spec"].get("replicas") != 1 or beat["spec"].get("strategy", {}).get("type") != "Recreate":
    errors.append("beat.yaml: beat must have exactly 1 replica and strategy Recreate")
pvc = docs.get(("PersistentVolumeClaim", "rlhf-registry"))
if not pvc or "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
    errors.append("registry-pvc.yaml: the registry volume must be ReadWriteMany")
server = docs.get(("Deployment", "rlhf-serve"))
if server:
    c = server["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        if (c.get(probe) or {}).get("grpc", {}).get("port") != 50051:
            errors.append(f"server.yaml: {probe} must be a grpc probe on 50051")
    if server["spec"]["strategy"]["rollingUpdate"].get("maxUnavailable") != 0:
        errors.append("server.yaml: rollingUpdate.maxUnavailable must be 0")
else:
    errors.append("server.yaml: Deployment rlhf-serve missing")

print(f"  {count} documents in {len(files)} files")
if errors:
    print("\n".join("  FAIL " + e for e in errors), file=sys.stderr)
    sys.exit(1)
PYEOF

# --- 4. Dockerfile sanity (no hadolint here) --------------------------------------------------
step "Dockerfile"
for pattern in '^FROM ' '^USER ' '^EXPOSE 50051 9090' '^ENTRYPOINT \["rlhf-serve"\]' '^CMD \["serve"\]' \
               'grpc_tools.protoc' 'pip install \.'; do
  grep -Eq "$pattern" Dockerfile || { echo "Dockerfile: no line matching $pattern" >&2; exit 1; }
done
grep -Eq '^USER (root|0)' Dockerfile && { echo "Dockerfile: runs as root" >&2; exit 1; }
grep -qx 'rlhf' .dockerignore || { echo ".dockerignore: must exclude the generated rlhf/" >&2; exit 1; }
echo "  ok"

step "all deployment checks passed"
