#!/usr/bin/env bash
# Measures the local stack: warm `up` time (caches built, processes stopped) and the
# resident memory of each component once idle. Prints a Markdown table for BENCHMARKS.md.
# Usage: bench/stack-footprint.sh [idle seconds, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-30}
RUN=${OMNINODE_RUN_DIR:-target/stack}

e2e/stack.sh build >/dev/null
e2e/stack.sh down >/dev/null 2>&1
started_ms=$(($(date +%s%N) / 1000000))
e2e/stack.sh up 2>/dev/null
up_ms=$(($(date +%s%N) / 1000000 - started_ms))
sleep "$IDLE"

echo "| component | RSS (MiB) |"
echo "|---|---:|"
total=0
for f in "$RUN"/pids/*.pid; do
  kib=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$f")/status")
  total=$((total + kib))
  printf '| %s | %d |\n' "$(basename "$f" .pid)" $((kib / 1024))
done
printf '| **total** | **%d** |\n\n' $((total / 1024))
printf 'warm up (all components ready): %d.%d s; memory read after %s s idle\n' $((up_ms / 1000)) $((up_ms % 1000 / 100)) "$IDLE"
