#!/usr/bin/env bash
# EventTopic benchmark: N EventTopics (1 partition, RF 3) applied in one server-side apply,
# time until all are Ready and the operator's peak RSS; side by side in the same run with
# the floor, a bare admin-API program creating the same number of topics.
# Usage: bench/topics.sh N      (prints one Markdown table row; deletes its topics after)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: bench/topics.sh N}
RUN_ID=$(date +%s)
NS=bench-topics-$RUN_ID
WORK=target/bench-topics/$RUN_ID
mkdir -p "$WORK"

e2e/stack.sh up >/dev/null
eval "$(e2e/stack.sh env)"
cargo build -q --release -p bridge-operator --bin bridge-operator --example create_topics
kubectl apply --server-side -f crds/ >/dev/null

cleanup() {
  if [ -n "${OPERATOR_PID:-}" ]; then kill "$OPERATOR_PID" 2>/dev/null || true; fi
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --topic "(floor|op)-$RUN_ID-.*" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The floor.
floor_seconds=$("${CARGO_TARGET_DIR:-target}/release/examples/create_topics" "$KAFKA_BOOTSTRAP_SERVERS" "floor-$RUN_ID" "$N")

# The operator, watching a namespace of its own.
kubectl create namespace "$NS" >/dev/null
for i in $(seq 0 $((N - 1))); do
  printf -- '---\napiVersion: bridge.omninode.io/v1alpha1\nkind: EventTopic\nmetadata: {name: t%d, namespace: %s}\nspec: {topicName: op-%s-%d, partitions: 1}\n' \
    "$i" "$NS" "$RUN_ID" "$i"
done > "$WORK/eventtopics.yaml"
"${CARGO_TARGET_DIR:-target}/release/bridge-operator" --watch-namespaces "$NS" --leader-election-namespace "$NS" \
  --identity "bench-$RUN_ID" --admin-listen 127.0.0.1:0 --resync-interval 5m \
  2> "$WORK/operator.log" &
OPERATOR_PID=$!
for _ in $(seq 1 100); do
  grep -q "leading: starting controllers" "$WORK/operator.log" && break
  sleep 0.2
done

started_ms=$(($(date +%s%N) / 1000000))
kubectl apply --server-side -f "$WORK/eventtopics.yaml" >/dev/null
apply_ms=$(($(date +%s%N) / 1000000 - started_ms))
ready=0
while [ "$ready" -lt "$N" ]; do
  sleep 1
  ready=$(kubectl get eventtopics -n "$NS" --request-timeout=60s \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  if [ $(($(date +%s%N) / 1000000 - started_ms)) -gt 1800000 ]; then
    echo "bench: only $ready of $N Ready after 30 minutes" >&2
    exit 1
  fi
done
operator_ms=$(($(date +%s%N) / 1000000 - started_ms))
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$OPERATOR_PID/status")

# Columns: N | apply to all Ready | of which kubectl's apply | floor | operator peak RSS
printf '| %d | %d.%d s | %d.%d s | %s s | %d MiB |\n' "$N" $((operator_ms / 1000)) $((operator_ms % 1000 / 100)) \
  $((apply_ms / 1000)) $((apply_ms % 1000 / 100)) "$floor_seconds" $((peak_kib / 1024))
