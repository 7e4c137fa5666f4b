#!/usr/bin/env bash
# Regenerates go.mod/go.sum of this module for one Kubernetes release: requires
# k8s.io/kubernetes and replaces each staging module it pins at v0.0.0 (the list is read
# from the release's own go.mod, so a new staging module is never missed).
# Usage: e2e/k8s/pin.sh 1.36.3   (then commit go.mod and go.sum; stack.sh builds from them)
set -euo pipefail
KV=${1:?usage: pin.sh <kubernetes version, e.g. 1.36.3>}
cd "$(dirname "$0")"
export GOFLAGS=-mod=mod CGO_ENABLED=0
SV=v0.${KV#1.}
rm -f go.mod go.sum
go mod init omninode.io/bridge/e2e/k8s >/dev/null 2>&1
KGOMOD=$(go mod download -json "k8s.io/kubernetes@v$KV" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
go mod edit -go="$(awk '$1 == "go" {print $2; exit}' "$KGOMOD")"
godebug=$(awk '$1 == "godebug" {print $2; exit}' "$KGOMOD")
[ -n "$godebug" ] && go mod edit -godebug="$godebug"
awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$KGOMOD" | sort -u | while read -r m; do
  go mod edit -replace="$m=$m@$SV"
done
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$KV" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@v$KV" \
  "k8s.io/kubernetes/cmd/kube-scheduler@v$KV" \
  "k8s.io/kubernetes/cmd/kubectl@v$KV" "k8s.io/kubernetes/cmd/kubelet@v$KV" \
  "k8s.io/kubernetes/cmd/kube-proxy@v$KV"
go mod verify >/dev/null
echo "pinned k8s.io/kubernetes v$KV ($(grep -c '=> k8s.io/' go.mod) staging replaces)"
