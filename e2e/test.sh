#!/usr/bin/env bash
# The test command: lints, then the whole workspace's tests against the local stack.
# Brings the stack up if it is not (and stops it again afterwards); reuses a running one.
set -euo pipefail
cd "$(dirname "$0")/.."

stack_was_up=false
if e2e/stack.sh status >/dev/null 2>&1; then stack_was_up=true; fi
if [ "$stack_was_up" = false ]; then
  trap 'e2e/stack.sh down' EXIT
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
shellcheck -x .ci/run e2e/*.sh e2e/k8s/pin.sh bench/*.sh charts/*.sh

e2e/stack.sh up
eval "$(e2e/stack.sh env)"
e2e/stack.sh status
charts/test.sh
cargo test --workspace --locked --no-fail-fast
