#!/usr/bin/env bash
# Time from `kubectl apply` of a WebhookIngress to its first Ready receiver Pod on the
# stack's node, N times in a row (each a new WebhookIngress, deleted afterwards). Needs the
# demo's set-up (e2e/demo.sh: the operator installed by Helm, watching omninode-demo, with
# its EventTopics and Secret). Prints one line per round and the median.
# Usage: bench/ingress-ready.sh [rounds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
NS=omninode-demo
eval "$(e2e/stack.sh env)"
kubectl get secret github-webhook -n "$NS" >/dev/null || {
  echo "ingress-ready: run e2e/demo.sh first (it installs the operator and the demo's objects)" >&2
  exit 1
}

ready_pods() { # WebhookIngress name: how many of its receiver Pods are Ready
  kubectl get pods -n "$NS" -l "app.kubernetes.io/name=hook-receiver,app.kubernetes.io/instance=$1" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true
}

times=()
for round in $(seq 1 "$ROUNDS"); do
  name=bench-ready-$round
  started=$(date +%s%N)
  kubectl apply --server-side -n "$NS" -f - >/dev/null <<YAML
apiVersion: bridge.omninode.io/v1alpha1
kind: WebhookIngress
metadata: {name: $name}
spec:
  replicas: 1
  routes:
    - {name: github, path: /github, topic: tool-execution-events, auth: {github: {secretRef: {name: github-webhook}}}}
YAML
  deadline=$((SECONDS + 120))
  until [ "$(ready_pods "$name")" -ge 1 ]; do
    [ $SECONDS -lt $deadline ] || { echo "ingress-ready: $name had no Ready receiver within 120 s" >&2; exit 1; }
    sleep 0.1
  done
  ms=$((($(date +%s%N) - started) / 1000000))
  times+=("$ms")
  printf 'round %d: %d.%03d s\n' "$round" $((ms / 1000)) $((ms % 1000))
  kubectl delete webhookingress -n "$NS" "$name" --wait=true >/dev/null
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}')
printf 'median of %d: %d.%03d s (min %d ms, max %d ms)\n' "$ROUNDS" $((median / 1000)) $((median % 1000)) \
  "$(printf '%s\n' "${times[@]}" | sort -n | head -1)" "$(printf '%s\n' "${times[@]}" | sort -n | tail -1)"
