#!/usr/bin/env bash
# The main job, on the local stack: bring it up (a real node running our own image),
# install the CRDs and the operator with Helm, apply the examples (the standard topics, a
# GitHub WebhookIngress with its Secret, an EventConsumer whose sink is a Pod that prints
# events), send a few signed webhooks to the receivers through their Service, and show the
# objects, the Pods and the events the sink printed.
# Safe to run again: everything it applies is declarative, and each run sends new
# deliveries. Everything keeps running afterwards; `e2e/stack.sh down` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=omninode-demo
OPERATOR_NS=omninode-system
WEBHOOKS=${DEMO_WEBHOOKS:-3}
BOUND=${DEMO_BOUND:-180}   # seconds any one wait may take

e2e/stack.sh up
eval "$(e2e/stack.sh env)"
e2e/stack.sh status
: "${BRIDGE_WORKLOAD_IMAGE:?e2e/stack.sh env did not name the image}"
# repository:tag@digest, as e2e/image.sh printed it.
IMAGE_NAME=${BRIDGE_WORKLOAD_IMAGE%%@*}
REPOSITORY=${IMAGE_NAME%:*}
TAG=${IMAGE_NAME##*:}
DIGEST=${BRIDGE_WORKLOAD_IMAGE#*@}

say() { printf '\n$ %s\n' "$*"; }
wait_until() { # what, command...
  local what=$1 deadline=$((SECONDS + BOUND))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "demo: timed out after ${BOUND}s waiting for $what" >&2
      kubectl get et,wi,ec,pods -n "$NS" >&2 || true
      echo "demo: last lines of the operator's log:" >&2
      kubectl logs -n "$OPERATOR_NS" deploy/omninode-bridge --tail=20 >&2 || true
      exit 1
    fi
    sleep 1
  done
}

say kubectl get nodes -o wide
kubectl get nodes -o wide
say kubectl apply --server-side -f crds/
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# It watches the demo's namespace only: the tests run operators of their own in theirs.
say "helm upgrade --install omninode-bridge charts/omninode-bridge -n $OPERATOR_NS --set image.repository=$REPOSITORY --set image.tag=$TAG --set image.digest=$DIGEST ..."
helm upgrade --install omninode-bridge charts/omninode-bridge -n "$OPERATOR_NS" --create-namespace \
  --set "image.repository=$REPOSITORY" --set "image.tag=$TAG" --set "image.digest=$DIGEST" \
  --set "kafka.bootstrapServers=${KAFKA_BOOTSTRAP_SERVERS//,/\\,}" \
  --set "operator.watchNamespaces={$NS}" --set operator.resyncInterval=30s --wait --timeout "${BOUND}s"

say kubectl apply -n "$NS" -f examples/standard-topics.yaml -f examples/demo/
kubectl apply --server-side -n "$NS" -f examples/standard-topics.yaml -f examples/demo/github-webhooks.yaml
# The sink runs the demo's event-printer image, pushed beside ours.
sed "s|image: omninode/event-printer:.*|image: $OMNINODE_REGISTRY/omninode/event-printer:$TAG|" \
  examples/demo/event-printer.yaml | kubectl apply --server-side -n "$NS" -f -
ready() { [ "$(kubectl get "$1" -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
for object in eventtopic/tool-execution-events webhookingress/github eventconsumer/event-printer; do
  wait_until "$object to be Ready" ready "$object"
done
kubectl rollout status -n "$NS" deployment/event-printer --timeout="${BOUND}s" >/dev/null

# The receivers, reached the way a client in the cluster reaches them: the Service's
# cluster IP (kube-proxy on this machine routes it to a ready receiver Pod).
SERVICE=$(kubectl get service -n "$NS" -l app.kubernetes.io/name=hook-receiver,app.kubernetes.io/instance=github \
  -o jsonpath='{.items[0].metadata.name}')
ADDRESS=$(kubectl get service -n "$NS" "$SERVICE" -o jsonpath='{.spec.clusterIP}:{.spec.ports[?(@.name=="http")].port}')
SECRET=$(kubectl get secret github-webhook -n "$NS" -o jsonpath='{.data.secret}' | base64 -d)

say "curl -X POST http://$ADDRESS/github  # $WEBHOOKS signed GitHub webhooks to Service $SERVICE"
RUN_ID=$(date +%s)
DELIVERIES=()
for i in $(seq 1 "$WEBHOOKS"); do
  delivery=demo-$RUN_ID-$i
  body="{\"action\":\"opened\",\"number\":$i,\"repository\":{\"full_name\":\"omninode/bridge\"},\"sender\":{\"login\":\"demo\"}}"
  signature=sha256=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.* //')
  printf '  %s: ' "$delivery"
  curl -sS --max-time 10 -X POST "http://$ADDRESS/github" -H 'Content-Type: application/json' \
    -H 'X-GitHub-Event: pull_request' -H "X-GitHub-Delivery: $delivery" \
    -H "X-Hub-Signature-256: $signature" --data-binary "$body" -w ' (HTTP %{http_code})\n'
  DELIVERIES+=("$delivery")
done
printf '  a wrong signature: '
curl -sS --max-time 10 -X POST "http://$ADDRESS/github" -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: demo-$RUN_ID-forged" -H 'X-Hub-Signature-256: sha256=00' --data-binary '{}' \
  -w ' (HTTP %{http_code})\n'

EVENTS=$(mktemp)
trap 'rm -f "$EVENTS"' EXIT
delivered() {
  kubectl logs -n "$NS" deployment/event-printer > "$EVENTS" 2>/dev/null
  python3 - "$EVENTS" "${DELIVERIES[@]}" <<'PY'
import json, sys
seen = {json.loads(line)["attributes"].get("id") for line in open(sys.argv[1]) if line.startswith("{")}
sys.exit(0 if set(sys.argv[2:]) <= seen else 1)
PY
}
wait_until "the sink to receive the $WEBHOOKS events" delivered

say kubectl get et,wi,ec -n "$NS"
kubectl get et,wi,ec -n "$NS"
say "kubectl get pods -A -o wide  # containers of our image on the node $(kubectl get nodes -l omninode.io/node=real -o name)"
kubectl get pods -n "$OPERATOR_NS" -o wide
kubectl get pods -n "$NS" -o wide
say "kubectl logs -n $NS deploy/event-printer  # what the sink received"
python3 - "$EVENTS" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    e = json.loads(line)
    a = e["attributes"]
    print(f"  {a.get('type')}  id={a.get('id')}  correlationid={a.get('correlationid')}  "
          f"source={a.get('source')}  traceparent={e.get('traceparent')}")
PY
echo
echo "The stack, the operator and the demo's Pods stay up."
echo "Use the stack with: eval \"\$(e2e/stack.sh env)\"; stop it with: e2e/stack.sh down"
