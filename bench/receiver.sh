#!/usr/bin/env bash
# hook-receiver benchmark: open-loop load (vegeta, constant rate) of 1 KiB JSON webhooks
# signed the GitHub way (X-Hub-Signature-256), each answered 2xx only after Kafka took it
# with acks=all on a fresh topic (6 partitions, RF 3), side by side in one run by
#   the floor:      a bare rdkafka producer sending the same records with the same settings
#                   (services/receiver/examples/bare_producer.rs), as fast as it can, and
#                   paced at each rate of the same step search as the receivers
#   hook-receiver:  the release build, one `github` route, no dedupe window
#   the baseline:   the original design's aiohttp + aiokafka receiver
#                   (bench/baselines/receiver/), doing the same verify, wrap and produce
# The floor and both receivers get the same step search: 500, 1000, 2000, 4000 ... req/s for STEP_S
# seconds each until a step is not sustained (any non-2xx or error, p99 at or over 50 ms,
# or the sent rate under 95 % of the target; halving from 500 down to 50 when 500 is not
# sustained), then one step halfway between the last sustained rate and the first that was
# not; then HALF_S seconds at half the highest sustained rate for p50/p99. Every request carries one of KEYS delivery ids in turn (the
# correlation id and record key); the body and so its signature are the same for all.
# Usage: bench/receiver.sh [STEP_S [HALF_S]]     (defaults 10 and 15; prints a Markdown
# table; deletes its topics after). About 5 minutes on 2 idle cores.
# KAFKA_EXTRA="name=value ..." adds librdkafka properties to both hook-receiver (through
# `kafka.properties`) and the floor, e.g. KAFKA_EXTRA=max.in.flight.requests.per.connection=5
# (the receiver's default is 1). PARTITIONS=N changes the topics' partition count (6);
# BASELINE=0 skips the Python baseline (for comparing receiver settings only).
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_S=${1:-10}
HALF_S=${2:-15}
FIRST_RATE=500
MIN_RATE=50
MAX_RATE=64000
P99_LIMIT_MS=50
KEYS=1000
PARTITIONS=${PARTITIONS:-6}
BASELINE=${BASELINE:-1}
FLOOR_RECORDS=100000
FLOOR_IN_FLIGHT=1000
RUN_ID=$(date +%s)
TOPIC_FLOOR=bench-receiver-$RUN_ID-floor
TOPIC_RECEIVER=bench-receiver-$RUN_ID-receiver
TOPIC_BASELINE=bench-receiver-$RUN_ID-baseline
WORK=target/bench-receiver/$RUN_ID
VENV=$HOME/.cache/omninode-bridge/bench-receiver-venv
REQUIREMENTS=bench/baselines/receiver/requirements.txt
VEGETA_VERSION=12.13.0
VEGETA=$HOME/.cache/omninode-bridge/vegeta-$VEGETA_VERSION/vegeta
BIN=${CARGO_TARGET_DIR:-target}/release
read -r -a KAFKA_EXTRA_ARGS <<<"${KAFKA_EXTRA:-}"
kafka_properties=""
for property in "${KAFKA_EXTRA_ARGS[@]}"; do
  kafka_properties="$kafka_properties\"${property%%=*}\": \"${property#*=}\", "
done
kafka_properties="{${kafka_properties%, }}"
mkdir -p "$WORK"

say() { echo "bench: $*" >&2; }
load_before=$(uptime | sed 's/.*load average: //')
say "load average before: $load_before"

e2e/stack.sh up >/dev/null
eval "$(e2e/stack.sh env)"
cargo build -q --release -p hook-receiver --bin hook-receiver --example bare_producer
# The baseline's venv, made again whenever the pinned requirements change.
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt"; then
  rm -rf "$VENV"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi
if [ ! -x "$VEGETA" ]; then
  GOBIN=$(dirname "$VEGETA") go install "github.com/tsenart/vegeta/v12@v$VEGETA_VERSION"
fi

cleanup() {
  for pid in ${RECEIVER_PID:-} ${BASELINE_PID:-}; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  for topic in "$TOPIC_FLOOR" "$TOPIC_RECEIVER" "$TOPIC_BASELINE"; do
    kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --topic "$topic" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_s() {
  awk -v tck="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.1f", (f[12] + f[13]) / tck }' "/proc/$1/stat"
}
mib() { echo $((($1 + 512) / 1024)); }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for_http() { # url pid
  for _ in $(seq 300); do
    curl -sf -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || { say "process $2 exited before $1 answered"; exit 1; }
    sleep 0.1
  done
  say "$1 did not answer within 30 s"
  exit 1
}

for topic in "$TOPIC_FLOOR" "$TOPIC_RECEIVER" "$TOPIC_BASELINE"; do
  kafka-topics --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --create --topic "$topic" \
    --partitions "$PARTITIONS" --replication-factor 3 >/dev/null
done
sleep 2

# The body (a JSON object padded to 1 KiB, as bare_producer.rs builds it), its signature,
# and the targets: one per delivery id, vegeta cycles through them.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secret"
{
  printf '{"action":"opened","pad":"'
  head -c $((1024 - 28)) /dev/zero | tr '\0' x
  printf '"}'
} >"$WORK/body.json"
[ "$(wc -c <"$WORK/body.json")" -eq 1024 ] || { say "the body is not 1 KiB"; exit 1; }
SIGNATURE=sha256=$(openssl dgst -sha256 -hmac "$(cat "$WORK/secret")" -r "$WORK/body.json" | cut -d' ' -f1)
targets() { # url
  local i
  for ((i = 0; i < KEYS; i++)); do
    printf 'POST %s\nContent-Type: application/json\nX-GitHub-Event: push\nX-GitHub-Delivery: bench-delivery-%d\nX-Hub-Signature-256: %s\n@%s\n\n' \
      "$1" "$i" "$SIGNATURE" "$WORK/body.json"
  done
}

# One step: RATE req/s for SECONDS against the targets in file $1; sets p50_ms, p99_ms,
# sustained (yes/no) and why (what was not).
# One step: RATE for SECONDS, from vegeta against the targets, or (targets "floor") the bare
# producer paced at that rate; sets p50_ms, p99_ms, sustained and the reason it was not.
attack() { # targets-file name rate seconds
  local out=$WORK/$2-$3 outcome
  if [ "$1" = floor ]; then
    success=1
    read -r sent_rate p50_ms p99_ms _ < <("$BIN"/examples/bare_producer \
      "$KAFKA_BOOTSTRAP_SERVERS" "$TOPIC_FLOOR" $(($3 * $4)) "$KEYS" "$FLOOR_IN_FLIGHT" "$3" \
      ${KAFKA_EXTRA_ARGS[@]+"${KAFKA_EXTRA_ARGS[@]}"} 2>>"$WORK/floor.log") || success=0
    outcome="records/s, every record acknowledged: $success"
  else
    "$VEGETA" attack -targets "$1" -rate "$3/1s" -duration "$4s" -timeout 10s >"$out.bin"
    "$VEGETA" report -type json <"$out.bin" >"$out.json"
    read -r p50_ms p99_ms success sent_rate < <(jq -r \
      '[.latencies."50th" / 1e6, .latencies."99th" / 1e6, .success, .rate] | map(tostring) | join(" ")' "$out.json")
    outcome="req/s, $(jq -c .status_codes "$out.json")"
  fi
  p50_ms=$(printf '%.1f' "$p50_ms")
  p99_ms=$(printf '%.1f' "$p99_ms")
  why=$(awk -v s="$success" -v p99="$p99_ms" -v r="$sent_rate" -v target="$3" -v limit="$P99_LIMIT_MS" 'BEGIN {
    w = ""
    if (s < 1) w = w sprintf(" %.2f%% not 2xx;", (1 - s) * 100)
    if (p99 >= limit) w = w sprintf(" p99 %s ms;", p99)
    if (r < 0.95 * target) w = w sprintf(" sent %d/s;", r)
    print w }')
  if [ -z "$why" ]; then sustained=yes; else sustained=no; fi
  say "$2 at $3 $outcome: p50 $p50_ms ms, p99 $p99_ms ms, ${why:-sustained}"
  steps="$steps| $3 | $p50_ms | $p99_ms | ${why:-sustained} |"$'\n'
}

# The step search; sets best (0 when not even the first rate holds), steps (table rows),
# half_p50 and half_p99.
search() { # targets-file name
  local rate=$FIRST_RATE failed=0
  best=0
  steps=""
  attack "$1" "$2" "$rate" "$STEP_S"
  if [ "$sustained" = yes ]; then
    best=$rate
    while [ $((rate * 2)) -le "$MAX_RATE" ]; do
      rate=$((rate * 2))
      attack "$1" "$2" "$rate" "$STEP_S"
      if [ "$sustained" = no ]; then failed=$rate; break; fi
      best=$rate
    done
  else
    # Not even the first rate holds (a loaded machine): halve until one does.
    failed=$rate
    while [ $((rate / 2)) -ge "$MIN_RATE" ]; do
      rate=$((rate / 2))
      attack "$1" "$2" "$rate" "$STEP_S"
      if [ "$sustained" = yes ]; then best=$rate; break; fi
      failed=$rate
    done
  fi
  if [ "$best" -gt 0 ] && [ "$failed" -gt 0 ]; then
    rate=$(((best + failed) / 2))
    attack "$1" "$2" "$rate" "$STEP_S"
    if [ "$sustained" = yes ]; then best=$rate; fi
  fi
  half_p50=n/a
  half_p99=n/a
  best_label="$best req/s"
  if [ "$best" -eq 0 ]; then best_label="none from $MIN_RATE req/s up"; fi
  if [ "$best" -gt 0 ]; then
    attack "$1" "$2" $((best / 2)) "$HALF_S"
    half_p50="$p50_ms ms"
    half_p99="$p99_ms ms"
  fi
}

# (a) The floor.
say "floor: bare rdkafka producer, $FLOOR_RECORDS records, at most $FLOOR_IN_FLIGHT in flight"
read -r floor_rate floor_p50 floor_p99 floor_kib < <("$BIN"/examples/bare_producer \
  "$KAFKA_BOOTSTRAP_SERVERS" "$TOPIC_FLOOR" "$FLOOR_RECORDS" "$KEYS" "$FLOOR_IN_FLIGHT" 0 \
  ${KAFKA_EXTRA_ARGS[@]+"${KAFKA_EXTRA_ARGS[@]}"} 2>"$WORK/floor.log")
say "floor: $floor_rate records/s, delivery p50 $floor_p50 ms, p99 $floor_p99 ms"
say "floor: step search, paced"
search floor floor
floor_best=$best
floor_best_label=${best_label/req/records}
floor_steps=$steps
floor_half_p50=$half_p50
floor_half_p99=$half_p99

# hook-receiver.
port=$(free_port)
admin_port=$(free_port)
cat >"$WORK/receiver.yaml" <<EOF
listen: 127.0.0.1:$port
adminListen: 127.0.0.1:$admin_port
source: /bench/hook-receiver
kafka: {bootstrapServers: "$KAFKA_BOOTSTRAP_SERVERS", properties: $kafka_properties}
spool: {dir: $WORK/spool}
routes:
  - name: github
    path: /github
    topic: $TOPIC_RECEIVER
    eventType: {header: X-GitHub-Event, prefix: "com.github."}
    correlationId: {header: X-GitHub-Delivery}
    auth: {github: {secretFile: $WORK/secret}}
EOF
"$BIN/hook-receiver" --config "$WORK/receiver.yaml" 2>"$WORK/receiver.log" &
RECEIVER_PID=$!
wait_for_http "http://127.0.0.1:$admin_port/readyz" "$RECEIVER_PID"
targets "http://127.0.0.1:$port/github" >"$WORK/receiver.targets"
say "hook-receiver: step search"
search "$WORK/receiver.targets" hook-receiver
receiver_best=$best
receiver_best_label=$best_label
receiver_steps=$steps
receiver_half_p50=$half_p50
receiver_half_p99=$half_p99
receiver_kib=$(peak_rss_kib "$RECEIVER_PID")
receiver_cpu=$(cpu_s "$RECEIVER_PID")
# Nothing may have gone to the spool: every 2xx must be an acks=all acknowledgement.
spooled=$(curl -sf "http://127.0.0.1:$admin_port/metrics" | awk '/^hook_receiver_spooled_records_total/ {print $2}')
say "hook-receiver: spooled records: ${spooled:-0}"
kill -TERM "$RECEIVER_PID"
wait "$RECEIVER_PID" || say "hook-receiver exited with $? on SIGTERM"
RECEIVER_PID=

# (b) The baseline.
if [ "$BASELINE" = 1 ]; then
  port=$(free_port)
  "$VENV/bin/python" bench/baselines/receiver/receiver.py "$KAFKA_BOOTSTRAP_SERVERS" "$TOPIC_BASELINE" \
    "$WORK/secret" "$port" >"$WORK/baseline.out" 2>"$WORK/baseline.log" &
  BASELINE_PID=$!
  until [ -s "$WORK/baseline.out" ]; do
    kill -0 "$BASELINE_PID" 2>/dev/null || { say "the baseline exited; see $WORK/baseline.log"; exit 1; }
    sleep 0.1
  done
  targets "http://127.0.0.1:$port/github" >"$WORK/baseline.targets"
  say "baseline: step search"
  search "$WORK/baseline.targets" baseline
  baseline_best=$best
  baseline_best_label=$best_label
  baseline_steps=$steps
  baseline_half_p50=$half_p50
  baseline_half_p99=$half_p99
  baseline_kib=$(peak_rss_kib "$BASELINE_PID")
  baseline_cpu=$(cpu_s "$BASELINE_PID")
  kill -TERM "$BASELINE_PID"
  wait "$BASELINE_PID" || say "the baseline exited with $? on SIGTERM"
  BASELINE_PID=
else
  say "baseline: skipped (BASELINE=0)"
  baseline_best=0 baseline_best_label=skipped baseline_steps="" baseline_half_p50=n/a
  baseline_half_p99=n/a baseline_kib=0 baseline_cpu=n/a
fi

load_after=$(uptime | sed 's/.*load average: //')
say "load average after: $load_after"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
cat <<EOF
1 KiB JSON bodies, GitHub HMAC, $KEYS delivery ids (record keys), $PARTITIONS partitions (RF 3), acks=all;
steps of $STEP_S s, $HALF_S s at half the highest sustained rate; vegeta $VEGETA_VERSION;
extra librdkafka properties (receiver and floor): $kafka_properties.
Load average before: $load_before; after: $load_after.

| | highest sustained (p99 < $P99_LIMIT_MS ms) | p50 at half | p99 at half | peak RSS | CPU |
|---|---:|---:|---:|---:|---:|
| (a) floor: bare rdkafka producer, no HTTP, paced | $floor_best_label | $floor_half_p50 | $floor_half_p99 | | |
| (a) floor, as fast as it can (no latency bound) | $floor_rate records/s | $floor_p50 ms at that rate | $floor_p99 ms at that rate | $(mib "$floor_kib") MiB | |
| hook-receiver | $receiver_best_label | $receiver_half_p50 | $receiver_half_p99 | $(mib "$receiver_kib") MiB | $receiver_cpu s |
| (b) aiohttp + aiokafka | $baseline_best_label | $baseline_half_p50 | $baseline_half_p99 | $(mib "$baseline_kib") MiB | $baseline_cpu s |

The paced floor's latency counts from each record's scheduled send time; as fast as it
can: $FLOOR_RECORDS records, at most $FLOOR_IN_FLIGHT unacknowledged. Records hook-receiver
spooled: ${spooled:-0}.

Steps, floor (paced):

| records/s | p50 ms | p99 ms | |
|---:|---:|---:|---|
$floor_steps
Steps, hook-receiver:

| req/s | p50 ms | p99 ms | |
|---:|---:|---:|---|
$receiver_steps
Steps, baseline:

| req/s | p50 ms | p99 ms | |
|---:|---:|---:|---|
$baseline_steps
hook-receiver / paced floor: $(ratio "$receiver_best" "$floor_best") (goal ≥ 0.5; against the floor as fast as it can: $(ratio "$receiver_best" "$floor_rate")); hook-receiver / baseline: $(ratio "$receiver_best" "$baseline_best") (goal ≥ 5); peak RSS $(mib "$receiver_kib") MiB (goal ≤ 64).
EOF
