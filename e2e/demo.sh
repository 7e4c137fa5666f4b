#!/usr/bin/env bash
# The main job, on the local stack: bring it up, install the CRDs, run the operator, apply
# the standard topics (examples/standard-topics.yaml) and show them Ready in Kubernetes and
# on the Kafka brokers. Safe to run again: everything it applies is declarative.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=omninode-demo

e2e/stack.sh up
eval "$(e2e/stack.sh env)"
e2e/stack.sh status

echo
echo "\$ kubectl get nodes"
kubectl get nodes
echo
echo "\$ kubectl apply --server-side -f crds/"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
cargo build -q -p bridge-operator --bin bridge-operator
RUN_DIR=$(dirname "$KUBECONFIG")
"${CARGO_TARGET_DIR:-target}/debug/bridge-operator" --watch-namespaces "$NS" \
  --leader-election-namespace "$NS" --identity demo --admin-listen 127.0.0.1:0 \
  --resync-interval 30s 2>> "$RUN_DIR/logs/demo-operator.log" &
OPERATOR_PID=$!
trap 'kill "$OPERATOR_PID" 2>/dev/null || true' EXIT

echo
echo "\$ kubectl apply -n $NS -f examples/standard-topics.yaml"
kubectl apply --server-side -n "$NS" -f examples/standard-topics.yaml
if ! kubectl wait -n "$NS" --for=condition=Ready eventtopic --all --timeout=120s >/dev/null; then
  kubectl get et -n "$NS" >&2
  echo "demo: the EventTopics did not become Ready; last lines of $RUN_DIR/logs/demo-operator.log:" >&2
  tail -n 20 "$RUN_DIR/logs/demo-operator.log" >&2
  exit 1
fi

echo
echo "\$ kubectl get et -n $NS"
kubectl get et -n "$NS"
echo
echo "\$ kafka-topics --describe (on the brokers)"
for topic in workflow-events workflow-state audit-events; do
  kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --describe --topic "$topic" | head -1
done
echo
echo "The stack stays up (the demo's operator stops with the demo; its log: $RUN_DIR/logs/demo-operator.log)."
echo "Use the stack with: eval \"\$(e2e/stack.sh env)\"; stop it with: e2e/stack.sh down"
