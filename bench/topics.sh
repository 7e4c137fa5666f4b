#!/usr/bin/env bash
# EventTopic benchmark: N EventTopics (1 partition, RF 3) applied in one server-side apply,
# time until all are Ready and the operator's peak RSS; side by side in the same run with
# the floor, a bare admin-API program creating the same number of topics. For each
# creation, where the machine's CPU went (by command) and the operator's metrics.
# Then drift correction: with the operator stopped, every spec asks for 2 partitions and
# 7 days of retention; the time from the operator's start until Kafka has every change
# (its own metrics), and until every status shows it, with the number of AlterConfigs and
# CreatePartitions requests it took.
# With BEFORE_BINARY=path (an operator built from an older commit), that build too, side
# by side: a creation of its own (before this build's, in another namespace) and a drift
# correction (3 partitions, 14 days) after this build's.
# With DRIFT=no, creation only (for large N: the drift phases rewrite every object twice).
# Usage: [BEFORE_BINARY=...] [DRIFT=no] bench/topics.sh N
#   prints Markdown table rows; deletes its topics after
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: bench/topics.sh N}
RUN_ID=$(date +%s)
NS_PREFIX=bench-topics-$RUN_ID
WORK=target/bench-topics/$RUN_ID
mkdir -p "$WORK"

e2e/stack.sh up >/dev/null
eval "$(e2e/stack.sh env)"
cargo build -q --release -p bridge-operator --bin bridge-operator --example create_topics
kubectl apply --server-side -f crds/ >/dev/null

# Deletes every topic matching the regex. One `kafka-topics --delete` of 10,000 topics
# was seen to remove 2,000 and give up (its request timed out), so it is repeated until
# the list is empty (10 rounds were not always enough at 10,000, and the brokers went on
# deleting the floor's topics while the operator's were created).
delete_topics() {
  local _
  for _ in $(seq 1 60); do
    kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --topic "$1" >/dev/null 2>&1 || true
    [ -z "$(kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --list --topic "$1" 2>/dev/null)" ] && return 0
    sleep 5
  done
  echo "bench: topics matching $1 remain after 60 deletions" >&2
}

cleanup() {
  if [ -n "${OPERATOR_PID:-}" ]; then kill "$OPERATOR_PID" 2>/dev/null || true; fi
  kubectl delete namespace "$NS_PREFIX" "$NS_PREFIX-before" --wait=false >/dev/null 2>&1 || true
  delete_topics "(floor-$RUN_ID|op-$NS_PREFIX)-.*"
}
trap cleanup EXIT

kafka_files() { # the most files any broker has open
  local n max=0 pid
  for n in 1 2 3; do
    pid=$(cat "$(dirname "$KUBECONFIG")/pids/kafka-$n.pid")
    n=$(find "/proc/$pid/fd" -mindepth 1 2>/dev/null | wc -l)
    [ "$n" -gt "$max" ] && max=$n
  done
  echo "$max"
}

# The floor.
files_before_floor=$(kafka_files)
floor_seconds=$("${CARGO_TARGET_DIR:-target}/release/examples/create_topics" "$KAFKA_BOOTSTRAP_SERVERS" "floor-$RUN_ID" "$N")
# Its topics are not needed any more. Each replica keeps a file open on its broker, and the
# open-file limit may be as low as 20,000: wait (up to 3 minutes) until the brokers have
# closed the floor's files before the operator's topics open as many again.
delete_topics "floor-$RUN_ID-.*"
for _ in $(seq 1 180); do
  [ "$(kafka_files)" -le $((files_before_floor + N / 10)) ] && break
  sleep 1
done

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
seconds() { printf '%d.%d s' $(($1 / 1000)) $(($1 % 1000 / 100)); }
# start_operator BINARY LOG: starts it on a fresh admin port (ADMIN_PORT), waits until it leads.
start_operator() {
  ADMIN_PORT=$(free_port)
  "$1" --watch-namespaces "$NS" --leader-election-namespace "$NS" \
    --identity "bench-$RUN_ID" --admin-listen "127.0.0.1:$ADMIN_PORT" --resync-interval 5m \
    2> "$2" &
  OPERATOR_PID=$!
  for _ in $(seq 1 100); do
    grep -q "leading: starting controllers" "$2" && break
    sleep 0.2
  done
}
stop_operator() {
  kill "$OPERATOR_PID" 2>/dev/null || true
  wait "$OPERATOR_PID" 2>/dev/null || true
  OPERATOR_PID=
}
# A sample of the running operator's /metrics, 0 when absent.
metric() { # name labels
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk -v key="$1{$2}" '$1 == key {v = $2} END {printf "%d\n", v + 0}'
}
# Topics the running operator has written with OPERATION: its batch-size histogram's sum,
# or, for a build from before write batching (one topic per request), its request count.
topics_written() { # operation
  local sum
  sum=$(metric bridge_operator_kafka_admin_batch_size_sum "operation=\"$1\"")
  if [ "$sum" -eq 0 ]; then metric bridge_operator_kafka_writes_total "operation=\"$1\""; else echo "$sum"; fi
}
# CPU seconds used so far by every process of this machine, summed by command name (utime +
# stime of /proc/PID/stat with the children it has waited for, so kubectl counts under the
# shell that ran it; in clock ticks): two samples show where a phase's CPU went.
cpu_by_command() {
  local f line comm rest
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    comm=${line#*(}; comm=${comm%%)*}
    read -r -a rest <<< "${line##*) }"
    echo "${comm// /_} $((rest[11] + rest[12] + rest[13] + rest[14]))"
  done | awk '{t[$1] += $2} END {for (c in t) print c, t[c]}'
}
# cpu_report BEFORE AFTER: the commands that used at least 1 s between the two samples.
cpu_report() {
  awk -v hz="$(getconf CLK_TCK)" 'NR == FNR {b[$1] = $2; next} {d = ($2 - b[$1]) / hz; if (d >= 1) printf "%s %.1f s\n", $1, d}' "$1" "$2" | sort -k2 -rn
}
# How many EventTopics show PARTITIONS in status, with the current generation observed.
statuses_in_line() { # partitions
  kubectl get eventtopics -n "$NS" --request-timeout=60s \
    -o jsonpath='{range .items[*]}{.status.partitions} {.status.observedGeneration} {.metadata.generation}{"\n"}{end}' |
    awk -v p="$1" '$1 == p && $2 == $3 {n++} END {print n + 0}'
}

# creation LABEL BINARY: an operator (BINARY), watching a namespace of its own ($NS), and N
# new EventTopics in it applied at once; prints the table row and leaves that operator
# running (the drift phases stop it).
creation() {
  kubectl create namespace "$NS" >/dev/null
  local i yaml=$WORK/$NS.yaml
  for i in $(seq 0 $((N - 1))); do
    printf -- '---\napiVersion: bridge.omninode.io/v1alpha1\nkind: EventTopic\nmetadata: {name: t%d, namespace: %s}\nspec: {topicName: op-%s-%d, partitions: 1}\n' \
      "$i" "$NS" "$NS" "$i"
  done > "$yaml"
  start_operator "$2" "$WORK/operator-$NS.log"

  cpu_by_command > "$WORK/cpu-before-$NS.txt"
  local started_ms apply_ms operator_ms peak_kib ready=0
  started_ms=$(now_ms)
  kubectl apply --server-side -f "$yaml" >/dev/null
  apply_ms=$(($(now_ms) - started_ms))
  # Listing every object is itself load on the API server: at large N, look less often.
  local poll_s=$((N > 1000 ? N / 1000 : 1))
  while [ "$ready" -lt "$N" ]; do
    sleep "$poll_s"
    ready=$(kubectl get eventtopics -n "$NS" --request-timeout=60s \
      -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
    if [ $(($(now_ms) - started_ms)) -gt 1800000 ]; then
      echo "bench: only $ready of $N Ready after 30 minutes ($1)" >&2
      exit 1
    fi
  done
  operator_ms=$(($(now_ms) - started_ms))
  peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$OPERATOR_PID/status")
  cpu_by_command > "$WORK/cpu-ready-$NS.txt"
  cpu_report "$WORK/cpu-before-$NS.txt" "$WORK/cpu-ready-$NS.txt" > "$WORK/cpu-create-$NS.txt"
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" > "$WORK/metrics-create-$NS.txt"

  echo "bench: $1: CPU from the apply until all Ready, by command (also $WORK/cpu-create-$NS.txt):" >&2
  sed 's/^/bench:   /' "$WORK/cpu-create-$NS.txt" >&2
  echo "bench: $1: the operator's metrics at that moment: $WORK/metrics-create-$NS.txt" >&2
  # Columns: operator | N | apply to all Ready | of which kubectl's apply | floor | operator peak RSS | load
  printf '| %s | %d | %s | %s | %s s | %d MiB | %s |\n' "$1" "$N" "$(seconds "$operator_ms")" \
    "$(seconds "$apply_ms")" "$floor_seconds" $((peak_kib / 1024)) "$(cut -d' ' -f1 /proc/loadavg)"
}

OPERATOR=${CARGO_TARGET_DIR:-target}/release/bridge-operator
# The older build first, so whatever the brokers still do after a creation weighs on this
# build's figures, not on the older one's.
if [ -n "${BEFORE_BINARY:-}" ]; then
  NS=$NS_PREFIX-before
  creation "$(basename "$BEFORE_BINARY")" "$BEFORE_BINARY"
  stop_operator
fi
NS=$NS_PREFIX
creation "this build" "$OPERATOR"

# Drift correction: the specs change while no operator runs, so the next one finds all N
# topics out of line at once (as after an operator upgrade, or a bulk change by hand).
drift() { # label binary partitions retention
  stop_operator
  for i in $(seq 0 $((N - 1))); do
    printf -- '---\napiVersion: bridge.omninode.io/v1alpha1\nkind: EventTopic\nmetadata: {name: t%d, namespace: %s}\nspec: {topicName: op-%s-%d, partitions: %d, retention: %s}\n' \
      "$i" "$NS" "$NS" "$i" "$3" "$4"
  done > "$WORK/drift-$3.yaml"
  kubectl apply --server-side -f "$WORK/drift-$3.yaml" >/dev/null
  local started kafka_ms=0 status_ms=0 configs partitions
  started=$(now_ms)
  start_operator "$2" "$WORK/operator-$3.log"
  while [ "$kafka_ms" -eq 0 ] || [ "$status_ms" -eq 0 ]; do
    sleep 0.5
    if [ "$kafka_ms" -eq 0 ] && [ "$(topics_written alter_configs)" -ge "$N" ] &&
      [ "$(topics_written create_partitions)" -ge "$N" ]; then
      kafka_ms=$(($(now_ms) - started))
    fi
    if [ "$status_ms" -eq 0 ] && [ "$(statuses_in_line "$3")" -ge "$N" ]; then
      status_ms=$(($(now_ms) - started))
    fi
    if [ $(($(now_ms) - started)) -gt 1800000 ]; then
      echo "bench: drift ($1) not corrected after 30 minutes" >&2
      exit 1
    fi
  done
  configs=$(metric bridge_operator_kafka_writes_total 'operation="alter_configs"')
  partitions=$(metric bridge_operator_kafka_writes_total 'operation="create_partitions"')
  # Columns: operator | N | start to all changes in Kafka | to all statuses | AlterConfigs requests | CreatePartitions requests | load
  printf '| %s | %d | %s | %s | %d | %d | %s |\n' "$1" "$N" "$(seconds "$kafka_ms")" "$(seconds "$status_ms")" \
    "$configs" "$partitions" "$(cut -d' ' -f1 /proc/loadavg)"
}
[ "${DRIFT:-yes}" = no ] && exit 0
drift "this build" "$OPERATOR" 2 7d
if [ -n "${BEFORE_BINARY:-}" ]; then
  drift "$(basename "$BEFORE_BINARY")" "$BEFORE_BINARY" 3 14d
fi
