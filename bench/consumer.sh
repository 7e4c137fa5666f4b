#!/usr/bin/env bash
# event-consumer benchmark: a topic of N CloudEvents (1 KiB of data, 1,000 keys, 6
# partitions, RF 3) read from the start, side by side in one run by
#   the floor:      a bare rdkafka consumer (no HTTP), services/consumer/examples/bare_consumer.rs
#   event-consumer: the release build, `ordering: key`, `maxInFlight: 64`, POSTing every
#                   event to a trivial HTTP sink (services/consumer/examples/bench_sink.rs)
#   the baseline:   the original design's aiokafka + aiohttp dispatcher
#                   (bench/baselines/consumer/), POSTing to the same sink, until it has
#                   delivered N_BASELINE events (all N unless told fewer; with fewer, its
#                   drain time is extrapolated from its rate)
# events/s counts from the first event to the last one at the sink (the floor: from its
# first record to its last); the drain time from the process's start to the last event.
# With BEFORE_BINARY=path (an event-consumer built from an older commit), that build runs
# too, on the same topic and sink right after the current one, as its own row.
# Usage: [BEFORE_BINARY=...] bench/consumer.sh [N [N_BASELINE]]     (defaults 1000000 and N;
# prints a Markdown table; deletes its topic and groups after). About 5 minutes on 2 idle
# cores.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
N_BASELINE=${2:-$N}
KEYS=1000
PARTITIONS=6
RUN_ID=$(date +%s)
TOPIC=bench-consumer-$RUN_ID
BENCH_GROUPS=("$TOPIC-floor" "$TOPIC-event-consumer" "$TOPIC-baseline" "$TOPIC-before")
WORK=target/bench-consumer/$RUN_ID
VENV=$HOME/.cache/omninode-bridge/bench-consumer-venv
REQUIREMENTS=bench/baselines/consumer/requirements.txt
GIVE_UP_S=900
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$WORK"

say() { echo "bench: $*" >&2; }
load_before=$(uptime | sed 's/.*load average: //')
say "load average before: $load_before"

e2e/stack.sh up >/dev/null
eval "$(e2e/stack.sh env)"
cargo build -q --release -p event-consumer --bin event-consumer \
  --example bench_sink --example bench_produce --example bare_consumer
# The baseline's venv, made again whenever the pinned requirements change.
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt"; then
  rm -rf "$VENV"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi

cleanup() {
  for pid in ${CONSUMER_PID:-} ${BASELINE_PID:-} ${SINK_PID:-}; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --topic "$TOPIC" >/dev/null 2>&1 || true
  for group in "${BENCH_GROUPS[@]}"; do
    kafka-consumer-groups --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --group "$group" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# User + system CPU seconds of a running process (fields 14 and 15 of its stat).
cpu_s() {
  awk -v tck="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.1f", (f[12] + f[13]) / tck }' "/proc/$1/stat"
}
sink_stats() { curl -sf "http://$SINK/stats"; }
# Waits until the sink has counted $1 events while process $2 lives; sets count, first_ms, last_ms.
wait_for_sink() {
  local deadline=$(($(date +%s) + GIVE_UP_S))
  while :; do
    read -r count first_ms last_ms < <(sink_stats)
    [ "$count" -ge "$1" ] && return 0
    if ! kill -0 "$2" 2>/dev/null; then say "the process $2 exited with $count of $1 events at the sink"; exit 1; fi
    if [ "$(date +%s)" -gt "$deadline" ]; then say "only $count of $1 events at the sink after ${GIVE_UP_S} s"; exit 1; fi
    sleep 0.2
  done
}
per_s() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%d", n * 1000 / ms }'; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
mib() { echo $((($1 + 512) / 1024)); }

# The topic, filled the way the receiver writes.
kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --create --topic "$TOPIC" \
  --partitions "$PARTITIONS" --replication-factor 3 >/dev/null
sleep 2
say "producing $N events to $TOPIC"
produce_s=$("$BIN"/examples/bench_produce "$KAFKA_BOOTSTRAP_SERVERS" "$TOPIC" "$N" "$KEYS")
say "produced in $produce_s s"

# The sink, shared by event-consumer and the baseline.
"$BIN"/examples/bench_sink 127.0.0.1:0 >"$WORK/sink.addr" 2>"$WORK/sink.log" &
SINK_PID=$!
until [ -s "$WORK/sink.addr" ]; do sleep 0.1; done
SINK=$(head -1 "$WORK/sink.addr")

# (a) The floor.
say "floor: bare rdkafka consumer"
read -r floor_total_ms floor_ms floor_kib floor_cpu < <("$BIN"/examples/bare_consumer \
  "$KAFKA_BOOTSTRAP_SERVERS" "$TOPIC" "${BENCH_GROUPS[0]}" "$N" 2>"$WORK/floor.log")
floor_rate=$(per_s "$N" "$floor_ms")

# event-consumer: run_consumer BINARY GROUP sets rate, drain_ms, kib, cpu and sink_cpu.
run_consumer() {
  cat >"$WORK/$2.yaml" <<EOF
adminListen: 127.0.0.1:0
kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP_SERVERS"}
groupId: $2
topics: [$TOPIC]
sink: {url: "http://$SINK/events"}
delivery: {ordering: key, maxInFlight: 64}
startFrom: earliest
EOF
  curl -sf -X DELETE "http://$SINK/stats"
  local sink_cpu_before started_ms
  sink_cpu_before=$(cpu_s "$SINK_PID")
  started_ms=$(now_ms)
  "$1" --config "$WORK/$2.yaml" 2>"$WORK/$2.log" &
  CONSUMER_PID=$!
  wait_for_sink "$N" "$CONSUMER_PID"
  drain_ms=$((last_ms - started_ms))
  kib=$(peak_rss_kib "$CONSUMER_PID")
  cpu=$(cpu_s "$CONSUMER_PID")
  sink_cpu=$(awk -v a="$sink_cpu_before" -v b="$(cpu_s "$SINK_PID")" 'BEGIN { printf "%.1f", b - a }')
  rate=$(per_s "$count" $((last_ms - first_ms)))
  kill -TERM "$CONSUMER_PID"
  wait "$CONSUMER_PID" || say "$1 exited with $? on SIGTERM"
  CONSUMER_PID=
}
say "event-consumer"
run_consumer "$BIN/event-consumer" "${BENCH_GROUPS[1]}"
consumer_rate=$rate consumer_drain_ms=$drain_ms consumer_kib=$kib consumer_cpu=$cpu consumer_sink_cpu=$sink_cpu
before_row=
if [ -n "${BEFORE_BINARY:-}" ]; then
  say "event-consumer before: $BEFORE_BINARY"
  run_consumer "$BEFORE_BINARY" "${BENCH_GROUPS[3]}"
  before_row="| event-consumer, the build in $(dirname "$BEFORE_BINARY") | $rate | $(secs "$drain_ms") s | $(mib "$kib") MiB | $cpu s | $sink_cpu s |"
fi

# (b) The baseline.
say "baseline: aiokafka + aiohttp, $N_BASELINE events"
curl -sf -X DELETE "http://$SINK/stats"
sink_cpu_before=$(cpu_s "$SINK_PID")
started_ms=$(now_ms)
"$VENV/bin/python" bench/baselines/consumer/dispatcher.py "$KAFKA_BOOTSTRAP_SERVERS" "$TOPIC" \
  "${BENCH_GROUPS[2]}" "http://$SINK/events" 2>"$WORK/baseline.log" &
BASELINE_PID=$!
wait_for_sink "$N_BASELINE" "$BASELINE_PID"
baseline_drain_ms=$((last_ms - started_ms))
baseline_ms=$((last_ms - first_ms))
baseline_count=$count
baseline_kib=$(peak_rss_kib "$BASELINE_PID")
baseline_cpu=$(cpu_s "$BASELINE_PID")
baseline_sink_cpu=$(awk -v a="$sink_cpu_before" -v b="$(cpu_s "$SINK_PID")" 'BEGIN { printf "%.1f", b - a }')
kill -TERM "$BASELINE_PID"
wait "$BASELINE_PID" || say "the baseline exited with $? on SIGTERM"
BASELINE_PID=
baseline_rate=$(per_s "$baseline_count" "$baseline_ms")
baseline_label="(b) aiokafka + aiohttp"
baseline_drain="$(secs "$baseline_drain_ms") s"
if [ "$baseline_count" -lt "$N" ]; then
  # Its drain time for N, had it gone on at the same rate.
  baseline_label="$baseline_label, first $baseline_count events"
  baseline_drain="~$(secs $((first_ms - started_ms + N * 1000 / baseline_rate))) s (extrapolated)"
fi

load_after=$(uptime | sed 's/.*load average: //')
say "load average after: $load_after"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
cat <<EOF
$N events of 1 KiB data, $KEYS keys, $PARTITIONS partitions (RF 3); produced in $produce_s s.
Load average before: $load_before; after: $load_after.

| | events/s | drain of $N | peak RSS | CPU | sink CPU |
|---|---:|---:|---:|---:|---:|
| (a) floor: bare rdkafka consumer, no HTTP | $floor_rate | $(secs "$floor_total_ms") s | $(mib "$floor_kib") MiB | $floor_cpu s | |
| event-consumer (key, maxInFlight 64) | $consumer_rate | $(secs "$consumer_drain_ms") s | $(mib "$consumer_kib") MiB | $consumer_cpu s | $consumer_sink_cpu s |
${before_row:+$before_row
}| $baseline_label | $baseline_rate | $baseline_drain | $(mib "$baseline_kib") MiB | $baseline_cpu s | $baseline_sink_cpu s |

event-consumer / floor: $(ratio "$consumer_rate" "$floor_rate") (goal ≥ 0.5); event-consumer / baseline: $(ratio "$consumer_rate" "$baseline_rate") (goal ≥ 5); peak RSS $(mib "$consumer_kib") MiB (goal ≤ 64).
EOF
