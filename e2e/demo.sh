#!/usr/bin/env bash
# The main job: bring the local stack up and show it working. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

e2e/stack.sh up
eval "$(e2e/stack.sh env)"
e2e/stack.sh status
echo
echo "\$ kubectl version"
kubectl version
echo
echo "\$ kubectl get nodes -o wide"
kubectl get nodes -o wide
echo
echo "\$ kcat -L (Kafka brokers)"
kcat -b "$KAFKA_BOOTSTRAP_SERVERS" -L -m 5 | sed -n '/brokers:/,/topics:/p'
echo
echo "The stack stays up; use it with: eval \"\$(e2e/stack.sh env)\"; stop it with: e2e/stack.sh down"
