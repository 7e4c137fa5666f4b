#!/usr/bin/env bash
# The main job, on the local stack: bring it up, install the CRDs, run the operator, apply
# the examples (the standard topics, a GitHub WebhookIngress with its Secret, an
# EventConsumer whose sink prints events), send a few signed webhooks to the receivers
# through their Service's EndpointSlice, and show the objects and the delivered events.
# Safe to run again: everything it applies is declarative, and each run sends new
# deliveries. The receiver and consumer pods run as local processes (the stack's
# pod-runner) and keep running after the demo; the operator and the printing sink stop
# with it.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=omninode-demo
WEBHOOKS=${DEMO_WEBHOOKS:-3}
BOUND=${DEMO_BOUND:-180}   # seconds any one wait may take

e2e/stack.sh up
eval "$(e2e/stack.sh env)"
e2e/stack.sh status
RUN_DIR=$(dirname "$KUBECONFIG")
DEMO_DIR=$RUN_DIR/demo
mkdir -p "$DEMO_DIR"
PRINTER_PORT=$((18088 + ${OMNINODE_PORT_OFFSET:-0}))

say() { printf '\n$ %s\n' "$*"; }
wait_until() { # what, command...
  local what=$1 deadline=$((SECONDS + BOUND))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "demo: timed out after ${BOUND}s waiting for $what" >&2
      kubectl get et,wi,ec -n "$NS" >&2 || true
      echo "demo: last lines of $DEMO_DIR/operator.log:" >&2
      tail -n 20 "$DEMO_DIR/operator.log" >&2 || true
      exit 1
    fi
    sleep 1
  done
}

say kubectl get nodes
kubectl get nodes
say kubectl apply --server-side -f crds/
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

cargo build -q --locked -p bridge-operator --bin bridge-operator
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
"${CARGO_TARGET_DIR:-target}/debug/bridge-operator" --watch-namespaces "$NS" \
  --leader-election-namespace "$NS" --identity demo --admin-listen 127.0.0.1:0 \
  --resync-interval 30s 2>> "$DEMO_DIR/operator.log" &
PIDS+=($!)
EVENTS=$DEMO_DIR/events.jsonl
: > "$EVENTS"
python3 e2e/event-printer.py --listen "127.0.0.1:$PRINTER_PORT" --out "$EVENTS" >> "$DEMO_DIR/event-printer.log" 2>&1 &
PIDS+=($!)

say kubectl apply -n "$NS" -f examples/standard-topics.yaml -f examples/demo/
kubectl apply --server-side -n "$NS" -f examples/standard-topics.yaml -f examples/demo/github-webhooks.yaml
sed "s|http://127.0.0.1:18088/|http://127.0.0.1:$PRINTER_PORT/|" examples/demo/event-printer.yaml \
  | kubectl apply --server-side -n "$NS" -f -
ready() { [ "$(kubectl get "$1" -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
for object in eventtopic/tool-execution-events webhookingress/github eventconsumer/event-printer; do
  wait_until "$object to be Ready" ready "$object"
done

# The receivers, found the way an in-cluster client finds them: the Service's ready
# endpoints. Each receiver process listens on its Pod IP's loopback twin (198.18.a.b ->
# 127.18.a.b, see ARCHITECTURE.md), so this traffic never leaves 127.0.0.0/8.
SERVICE=$(kubectl get service -n "$NS" -l app.kubernetes.io/name=hook-receiver,app.kubernetes.io/instance=github \
  -o jsonpath='{.items[0].metadata.name}')
endpoints() {
  kubectl get endpointslices -n "$NS" -l "kubernetes.io/service-name=$SERVICE" -o json | python3 -c '
import json, sys
for s in json.load(sys.stdin)["items"]:
    port = next(p["port"] for p in s.get("ports") or [] if p.get("name") == "http")
    for e in s.get("endpoints") or []:
        if e.get("conditions", {}).get("ready"):
            print("127." + e["addresses"][0].split(".", 1)[1] + ":" + str(port))'
}
has_endpoints() { [ -n "$(endpoints)" ]; }
wait_until "ready endpoints of Service $SERVICE" has_endpoints
mapfile -t ADDRESSES < <(endpoints)
SECRET=$(kubectl get secret github-webhook -n "$NS" -o jsonpath='{.data.secret}' | base64 -d)

say "curl -X POST http://<receiver endpoint>/github  # $WEBHOOKS signed GitHub webhooks, spread over ${#ADDRESSES[@]} receivers"
RUN_ID=$(date +%s)
DELIVERIES=()
for i in $(seq 1 "$WEBHOOKS"); do
  address=${ADDRESSES[$(((i - 1) % ${#ADDRESSES[@]}))]}
  delivery=demo-$RUN_ID-$i
  body="{\"action\":\"opened\",\"number\":$i,\"repository\":{\"full_name\":\"omninode/bridge\"},\"sender\":{\"login\":\"demo\"}}"
  signature=sha256=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.* //')
  printf '  %s -> %s: ' "$delivery" "$address"
  curl -sS --max-time 10 -X POST "http://$address/github" -H 'Content-Type: application/json' \
    -H 'X-GitHub-Event: pull_request' -H "X-GitHub-Delivery: $delivery" \
    -H "X-Hub-Signature-256: $signature" --data-binary "$body" -w ' (HTTP %{http_code})\n'
  DELIVERIES+=("$delivery")
done
printf '  a wrong signature -> %s: ' "${ADDRESSES[0]}"
curl -sS --max-time 10 -X POST "http://${ADDRESSES[0]}/github" -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: demo-$RUN_ID-forged" -H 'X-Hub-Signature-256: sha256=00' --data-binary '{}' \
  -w ' (HTTP %{http_code})\n'

delivered() {
  python3 - "$EVENTS" "${DELIVERIES[@]}" <<'PY'
import json, sys
seen = {json.loads(line)["attributes"].get("id") for line in open(sys.argv[1])}
sys.exit(0 if set(sys.argv[2:]) <= seen else 1)
PY
}
wait_until "the sink to receive the $WEBHOOKS events" delivered

say kubectl get et,wi,ec -n "$NS"
kubectl get et,wi,ec -n "$NS"
say "kubectl get pods -n $NS -o wide  # each one a local process, listening on its Pod IP's loopback twin (127.x.y.z)"
kubectl get pods -n "$NS" -o wide
say "cat $EVENTS  # what the sink received"
python3 - "$EVENTS" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    a = e["attributes"]
    print(f"  {a.get('type')}  id={a.get('id')}  correlationid={a.get('correlationid')}  "
          f"source={a.get('source')}  traceparent={e.get('traceparent')}")
PY
echo
echo "The stack and the receiver/consumer pods stay up; the operator and the printing sink stop now."
echo "Logs: $DEMO_DIR/ (operator, event-printer), $RUN_DIR/pods/ (each pod's process)."
echo "Use the stack with: eval \"\$(e2e/stack.sh env)\"; stop it with: e2e/stack.sh down"
