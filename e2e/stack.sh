#!/usr/bin/env bash
# The local stack every test, benchmark and the demo runs on: a real single-node Kubernetes
# cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler; a node with
# containerd, runc, kubelet, kube-proxy and CoreDNS; the registry our image is pulled
# from; local-path-provisioner behind the default StorageClass), kwok's fake nodes for scale tests, and three Apache Kafka brokers in KRaft mode,
# all built from the package registries and all on this machine. The node needs root.
#
#   e2e/stack.sh up            build what is missing (cached), start everything, wait until ready
#   e2e/stack.sh env           export lines: eval "$(e2e/stack.sh env)"
#   e2e/stack.sh status        one line per component (and SSL listener): up or down
#   e2e/stack.sh down          stop what `up` started and undo what the node changed; keeps caches and run data
#   e2e/stack.sh kafka-stop N.. stop brokers (1..3) together, for fault tests
#   e2e/stack.sh kafka-start N.. start them again and wait until they have registered
#   e2e/stack.sh build         only build / fetch the components into the cache
#
# `up` also builds the product's image (e2e/image.sh) and pushes it to the stack's
# registry: the operator's Pods run it on the node as real containers. The volume
# helper's busybox image comes from the same script.
#
# Builds are cached under ~/.cache/omninode-bridge/<component>-<version>/ (override with
# OMNINODE_CACHE_DIR); run data, pids and logs live in one run directory, target/stack in
# the repository (override with OMNINODE_RUN_DIR). Remove that directory for a fresh cluster.
set -euo pipefail
shopt -s nullglob

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
E2E=$REPO/e2e
CACHE=${OMNINODE_CACHE_DIR:-$HOME/.cache/omninode-bridge}
RUN=${OMNINODE_RUN_DIR:-$REPO/target/stack}

# Versions: Kubernetes and etcd are pinned by their Go modules under e2e/, Kafka by its pom.
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" {sub(/^v/, "", $2); print $2; exit}' "$E2E/k8s/go.mod")
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" {sub(/^v/, "", $2); print $2; exit}' "$E2E/etcd/go.mod")
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$E2E/kafka/pom.xml")
KWOK_VERSION=0.8.0
HELM_VERSION=3.22.0

K8S_DIR=$CACHE/kubernetes-$K8S_VERSION
ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
KWOK_DIR=$CACHE/kwok-$KWOK_VERSION
HELM_DIR=$CACHE/helm-$HELM_VERSION
KAFKA_DIR=$CACHE/kafka-$KAFKA_VERSION

# Ports, chosen away from the defaults so a developer's own cluster or broker is untouched.
# OMNINODE_PORT_OFFSET shifts them all, so a second checkout can run a stack of its own.
P=${OMNINODE_PORT_OFFSET:-0}
ETCD_PORT=$((12379 + P))
ETCD_PEER_PORT=$((12380 + P))
APISERVER_PORT=$((16443 + P))
KCM_PORT=$((16257 + P))
SCHEDULER_PORT=$((16259 + P))
KWOK_PORT=$((16247 + P))
KAFKA_BROKER_PORTS=($((19092 + P)) $((19094 + P)) $((19096 + P)))
KAFKA_CONTROLLER_PORTS=($((19093 + P)) $((19095 + P)) $((19097 + P)))
# Each broker's SSL listener, for clients that connect with TLS (the operator's
# --kafka-properties test); the brokers talk among themselves on PLAINTEXT.
KAFKA_SSL_PORTS=($((19192 + P)) $((19194 + P)) $((19196 + P)))
KAFKA_NODES=(1 2 3)
# Pod IPs kwok hands out on its fake nodes (scale tests only: nothing listens there).
KWOK_POD_CIDR=127.1.0.0/16
NODE_COUNT=2

WAIT_SECONDS=${OMNINODE_WAIT_SECONDS:-120}

log() { printf '%s stack: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=e2e/node.sh
. "$E2E/node.sh"

kafka_bootstrap() {
  local IFS=,
  local servers=()
  for p in "${KAFKA_BROKER_PORTS[@]}"; do servers+=("$NODE_IP:$p"); done
  echo "${servers[*]}"
}

kafka_ssl_bootstrap() {
  local IFS=,
  local servers=()
  for p in "${KAFKA_SSL_PORTS[@]}"; do servers+=("127.0.0.1:$p"); done
  echo "${servers[*]}"
}

# --- prerequisites -------------------------------------------------------------------

require() { # command, Debian package that provides it
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install it (Debian: apt-get install $2)"
}

check_prerequisites() {
  require go "golang (Go >= 1.26)"
  require java "openjdk-17-jre-headless"
  require mvn "maven"
  require openssl "openssl"
  require curl "curl"
  require kcat "kcat"
  local gov
  gov=$(go env GOVERSION)
  case $gov in
    go1.2[6-9]* | go1.[3-9]*) ;;
    *) die "Go $gov is too old: Kubernetes $K8S_VERSION needs Go >= 1.26" ;;
  esac
}

# Kafka's operations guide asks for a high open-file limit and vm.max_map_count well above
# the default 65530: every partition segment holds a file and two memory maps, and the
# benchmarks create 10,000 topics.
raise_limits() {
  local hard
  hard=$(ulimit -Hn)
  ulimit -n "$hard" 2>/dev/null || true
  if [ "$hard" != unlimited ] && [ "$hard" -lt 100000 ]; then
    log "note: open-file limit is $hard (Kafka recommends >= 100000); raise the hard limit (ulimit -Hn / limits.conf) for very large topic counts"
  fi
  local maps
  maps=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
  if [ "$maps" -lt 262144 ]; then
    if sysctl -qw vm.max_map_count=262144 2>/dev/null; then
      log "raised vm.max_map_count from $maps to 262144"
    else
      log "note: vm.max_map_count is $maps; Kafka needs more for many partitions: sudo sysctl -w vm.max_map_count=262144"
    fi
  fi
}

# --- builds (cached by version) ------------------------------------------------------

go_env() {
  export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
}

# The version stamp kubectl, the API server and the node report (v0.0.0-master without it).
k8s_ldflags() {
  local minor=${K8S_VERSION#1.}
  minor=${minor%%.*}
  local v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version
  echo "-s -w -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor
    -X $v.gitTreeState=clean -X $c.gitVersion=v$K8S_VERSION -X $c.gitMajor=1 -X $c.gitMinor=$minor"
}

# The control plane and kubectl; the node's kubelet and kube-proxy follow (build_kubelet),
# in the same job so that they take the shared packages from Go's build cache.
build_kubernetes() {
  if [ ! -x "$K8S_DIR/bin/kube-apiserver" ]; then
    go_env
    rm -rf "$K8S_DIR/bin.tmp" && mkdir -p "$K8S_DIR/bin.tmp"
    (cd "$E2E/k8s" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$K8S_DIR/bin.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
    mv "$K8S_DIR/bin.tmp" "$K8S_DIR/bin"
  fi
  build_kubelet
}

build_etcd() {
  [ -x "$ETCD_DIR/bin/etcd" ] && return 0
  go_env
  rm -rf "$ETCD_DIR/bin.tmp" && mkdir -p "$ETCD_DIR/bin.tmp"
  (cd "$E2E/etcd" && go build -trimpath -ldflags "-s -w" -o "$ETCD_DIR/bin.tmp/etcd" go.etcd.io/etcd/server/v3)
  mv "$ETCD_DIR/bin.tmp" "$ETCD_DIR/bin"
}

# kwok's module has no replace directives, so `go install` at a pinned version works. Its
# Stage objects (what makes fake nodes and pods Ready) ship in the same module.
build_kwok() {
  [ -x "$KWOK_DIR/bin/kwok" ] && return 0
  go_env
  rm -rf "$KWOK_DIR/bin.tmp" && mkdir -p "$KWOK_DIR/bin.tmp"
  GOBIN="$KWOK_DIR/bin.tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  mv "$KWOK_DIR/bin.tmp" "$KWOK_DIR/bin"
}

# kwok's Stage documents, written at every `up` into the run directory (not the build
# cache, so a cached kwok gets changes to them). Only Stage documents: a
# KwokConfiguration document here would replace kwok's defaults.
write_kwok_stages() { # output file
  local src f
  src=$(go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$src/kustomize/stage" ] || die "kwok v$KWOK_VERSION's stages not found in the Go module cache"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    printf -- '---\n'
    cat "$src/kustomize/stage/$f"
  done > "$1"
}

build_helm() {
  [ -x "$HELM_DIR/bin/helm" ] && return 0
  go_env
  local minor=${K8S_VERSION#1.}
  minor=${minor%%.*}
  rm -rf "$HELM_DIR/bin.tmp" && mkdir -p "$HELM_DIR/bin.tmp"
  GOBIN="$HELM_DIR/bin.tmp" go install -trimpath -ldflags "-s -w
    -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  mv "$HELM_DIR/bin.tmp" "$HELM_DIR/bin"
}

fetch_kafka() {
  [ -d "$KAFKA_DIR/libs" ] && return 0
  rm -rf "$KAFKA_DIR/libs.tmp" && mkdir -p "$KAFKA_DIR"
  mvn -B -q -f "$E2E/kafka/pom.xml" package -Dlibs.dir="$KAFKA_DIR/libs.tmp"
  rm -rf "$E2E/kafka/target"
  mv "$KAFKA_DIR/libs.tmp" "$KAFKA_DIR/libs"
}

# Builds run side by side; each writes a log, and a failure shows its tail.
build_all() {
  check_prerequisites
  mkdir -p "$CACHE/logs"
  local names=(kubernetes etcd kwok helm kafka containerd runc cni_plugins crane coredns cri_tools
    local_path_provisioner) pids=() failed=0
  for name in "${names[@]}"; do
    local fn=build_$name
    [ "$name" = kafka ] && fn=fetch_kafka
    if is_built "$name"; then
      pids+=("")
      continue
    fi
    log "building $name (log: $CACHE/logs/$name.log)"
    (
      t0=$SECONDS
      "$fn" > "$CACHE/logs/$name.log" 2>&1
      echo $((SECONDS - t0)) > "$CACHE/logs/$name.seconds"
    ) &
    pids+=("$!")
  done
  for i in "${!names[@]}"; do
    [ -z "${pids[$i]}" ] && continue
    if wait "${pids[$i]}"; then
      log "built ${names[$i]} in $(cat "$CACHE/logs/${names[$i]}.seconds") s (side by side with the other builds)"
    else
      failed=1
      printf 'stack: building %s failed; last lines of %s:\n' "${names[$i]}" "$CACHE/logs/${names[$i]}.log" >&2
      tail -n 30 "$CACHE/logs/${names[$i]}.log" >&2
    fi
  done
  [ "$failed" = 0 ] || die "a build failed (see above)"
  link_bin
}

is_built() {
  case $1 in
    kubernetes) [ -x "$K8S_DIR/bin/kube-apiserver" ] && [ -x "$KUBELET_DIR/bin/kubelet" ] ;;
    etcd) [ -x "$ETCD_DIR/bin/etcd" ] ;;
    kwok) [ -x "$KWOK_DIR/bin/kwok" ] ;;
    helm) [ -x "$HELM_DIR/bin/helm" ] ;;
    kafka) [ -d "$KAFKA_DIR/libs" ] ;;
    containerd) [ -d "$CONTAINERD_DIR/bin" ] ;;
    runc) [ -d "$RUNC_DIR/bin" ] ;;
    cni_plugins) [ -d "$CNI_DIR/bin" ] ;;
    crane) [ -d "$CRANE_DIR/bin" ] ;;
    coredns) [ -d "$COREDNS_DIR/bin" ] ;;
    cri_tools) [ -d "$CRI_TOOLS_DIR/bin" ] ;;
    local_path_provisioner) [ -d "$LOCAL_PATH_DIR/bin" ] ;;
  esac
}

# The stack's bin/: the built binaries, kcat, and Kafka's own CLI tools from the same jars.
link_bin() {
  local bin=$RUN/bin
  mkdir -p "$bin" "$RUN/kafka"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -sf "$K8S_DIR/bin/$b" "$bin/$b"; done
  ln -sf "$ETCD_DIR/bin/etcd" "$bin/etcd"
  ln -sf "$KWOK_DIR/bin/kwok" "$bin/kwok"
  ln -sf "$HELM_DIR/bin/helm" "$bin/helm"
  ln -sf "$KUBELET_DIR/bin/kubelet" "$bin/kubelet"
  ln -sf "$KUBELET_DIR/bin/kube-proxy" "$bin/kube-proxy"
  ln -sf "$CRANE_DIR/bin/crane" "$bin/crane"
  ln -sf "$CRI_TOOLS_DIR/bin/crictl" "$bin/crictl"
  ln -sf "$(command -v kcat)" "$bin/kcat"
  cat > "$RUN/kafka/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
  local tool class
  for tool in kafka-topics:org.apache.kafka.tools.TopicCommand \
    kafka-configs:org.apache.kafka.tools.ConfigCommand \
    kafka-consumer-groups:org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
    kafka-console-producer:org.apache.kafka.tools.ConsoleProducer \
    kafka-console-consumer:org.apache.kafka.tools.consumer.ConsoleConsumer \
    kafka-storage:kafka.tools.StorageTool; do
    class=${tool#*:}
    cat > "$bin/${tool%%:*}" <<EOF
#!/bin/sh
# Kafka $KAFKA_VERSION CLI tool, run from the jars in $KAFKA_DIR/libs (written by e2e/stack.sh).
exec java -Xmx512m -Dlog4j2.configurationFile="$RUN/kafka/tools-log4j2.properties" \\
  -cp "$KAFKA_DIR/libs/*" $class "\$@"
EOF
    chmod +x "$bin/${tool%%:*}"
  done
}

# --- processes -----------------------------------------------------------------------

pid_file() { echo "$RUN/pids/$1.pid"; }

is_running() {
  local f
  f=$(pid_file "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start NAME CMD...: runs CMD detached in its own session, logging to $RUN/logs/NAME.log.
start() {
  local name=$1
  shift
  if is_running "$name"; then
    return 0
  fi
  mkdir -p "$RUN/pids" "$RUN/logs"
  setsid "$@" >> "$RUN/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pid_file "$name")"
}

# stop NAME...: SIGTERM to all at once, then up to 20 s for them to exit, then SIGKILL.
# Kafka brokers go down together: one by one, the last would wait for a controller quorum
# that has already gone.
stop() {
  local name f pids=() names=()
  for name in "$@"; do
    f=$(pid_file "$name")
    [ -f "$f" ] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then
      kill -TERM "$(cat "$f")" 2>/dev/null || true
      pids+=("$(cat "$f")")
      names+=("$name")
    fi
    rm -f "$f"
  done
  local i deadline=$((SECONDS + 20))
  for i in "${!pids[@]}"; do
    while kill -0 "${pids[$i]}" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} did not stop within 20 s of SIGTERM; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
}

# wait_until NAME CHECK...: polls CHECK until it succeeds; on timeout or when the process
# died, prints the tail of its log and fails.
wait_until() {
  local name=$1
  shift
  local deadline=$((SECONDS + WAIT_SECONDS))
  until "$@" >/dev/null 2>&1; do
    if ! is_running "$name"; then
      fail_with_log "$name exited during startup"
    fi
    if [ $SECONDS -ge $deadline ]; then
      fail_with_log "$name was not ready within $WAIT_SECONDS s"
    fi
    sleep 0.5
  done
}

fail_with_log() {
  local name=${1%% *}
  printf 'stack: error: %s; last lines of %s:\n' "$1" "$RUN/logs/$name.log" >&2
  tail -n 25 "$RUN/logs/$name.log" >&2 || true
  exit 1
}

# --- Kubernetes control plane --------------------------------------------------------

PKI=$RUN/pki

# client_cert NAME SUBJECT: a client certificate NAME.crt/.key from the stack's CA (run in $PKI).
client_cert() {
  # X.509 v3 with key usages: rustls (kube-rs) refuses v1 certificates.
  printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=clientAuth' > "$1.ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 -extfile "$1.ext"
  rm -f "$1.csr" "$1.ext"
}

# kubeconfig_for NAME: a kubeconfig for the API server on the node's address, as the
# client certificate NAME.crt.
kubeconfig_for() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: omninode-e2e
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: omninode-e2e
  context: {cluster: omninode-e2e, user: $1}
current-context: omninode-e2e
EOF
}

# The API server serves on the node's address (Pods reach it there, through the Service
# kubernetes.default), so its certificate names that address and the Service's.
APISERVER_SAN="IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

make_pki() {
  mkdir -p "$PKI"
  (
    cd "$PKI"
    if [ ! -f admin.crt ]; then
      openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=omninode-bridge-e2e-ca
      # The admin identity (group system:masters) used by kubectl, the tests and the control plane.
      client_cert admin "/O=system:masters/CN=omninode-admin"
      openssl genrsa -out sa.key 2048
      openssl rsa -in sa.key -pubout -out sa.pub
    fi
    # A run directory from before the node has a certificate for 127.0.0.1 only.
    if ! grep -qx "$APISERVER_SAN" apiserver.san 2>/dev/null; then
      openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
      printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
        'extendedKeyUsage=serverAuth' "subjectAltName=$APISERVER_SAN" > apiserver.ext
      openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile apiserver.ext
      rm -f apiserver.csr apiserver.ext
      echo "$APISERVER_SAN" > apiserver.san
    fi
  ) >> "$RUN/logs/pki.log" 2>&1 || fail_with_log "pki generation failed"
  kubeconfig_for admin > "$RUN/kubeconfig"
}

# The certificate of the brokers' SSL listeners, from the stack's CA, in the one file Kafka
# reads as a PEM keystore: the certificate, then its unencrypted PKCS#8 private key. A step
# of its own with its own guard file: make_pki runs only on a fresh PKI, and a run
# directory made before the SSL listeners existed needs the certificate too. A CA made
# after it (a PKI renewed without it) gets a new one.
KAFKA_KEYSTORE=$PKI/kafka-server.pem

make_kafka_tls() {
  [ "$KAFKA_KEYSTORE" -nt "$PKI/ca.crt" ] && return 0
  (
    cd "$PKI"
    umask 077
    # SAN IP:127.0.0.1, the advertised host: librdkafka checks the name by default.
    printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' > kafka-server.ext
    openssl req -newkey rsa:2048 -nodes -keyout kafka-server.key -out kafka-server.csr -subj /CN=kafka
    openssl x509 -req -in kafka-server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kafka-server.crt -days 3650 -extfile kafka-server.ext
    cat kafka-server.crt kafka-server.key > kafka-server.pem.tmp
    mv kafka-server.pem.tmp "$KAFKA_KEYSTORE"
    rm -f kafka-server.csr kafka-server.ext kafka-server.key
  ) >> "$RUN/logs/pki.log" 2>&1 || fail_with_log "pki generation for the Kafka SSL listeners failed"
}

https_ok() { # url: succeeds when the endpoint answers 200 to the admin identity
  curl -sf --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$1"
}

start_etcd() {
  start etcd "$ETCD_DIR/bin/etcd" --name=e2e --data-dir="$RUN/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="e2e=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls="" \
    --auto-compaction-retention=1 --quota-backend-bytes=4294967296 --unsafe-no-fsync=true
}

start_apiserver() {
  start kube-apiserver "$K8S_DIR/bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --cert-dir="$RUN/kube-apiserver"
}

start_controller_manager() {
  start kube-controller-manager "$K8S_DIR/bin/kube-controller-manager" \
    --kubeconfig="$RUN/kubeconfig" --authentication-kubeconfig="$RUN/kubeconfig" \
    --authorization-kubeconfig="$RUN/kubeconfig" --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --cert-dir="$RUN/kube-controller-manager" --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" --controllers='*'
}

start_scheduler() {
  start kube-scheduler "$K8S_DIR/bin/kube-scheduler" \
    --kubeconfig="$RUN/kubeconfig" --authentication-kubeconfig="$RUN/kubeconfig" \
    --authorization-kubeconfig="$RUN/kubeconfig" --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
    --cert-dir="$RUN/kube-scheduler" --leader-elect=false
}

# Writes the Stages; a running kwok whose Stages changed is restarted to pick them up.
start_kwok() {
  mkdir -p "$RUN/kwok"
  write_kwok_stages "$RUN/kwok/stages.yaml.new"
  if ! cmp -s "$RUN/kwok/stages.yaml.new" "$RUN/kwok/stages.yaml"; then
    mv "$RUN/kwok/stages.yaml.new" "$RUN/kwok/stages.yaml"
    if is_running kwok; then
      log "kwok's Stages changed; restarting kwok"
      stop kwok
    fi
  else
    rm -f "$RUN/kwok/stages.yaml.new"
  fi
  start kwok "$KWOK_DIR/bin/kwok" --kubeconfig="$RUN/kubeconfig" --config="$RUN/kwok/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr="$KWOK_POD_CIDR" --node-ip=127.0.0.1 --node-port="$KWOK_PORT" \
    --server-address="127.0.0.1:$KWOK_PORT" --node-lease-duration-seconds=40
}

# --- nodes ---------------------------------------------------------------------------

kubectl_() { "$K8S_DIR/bin/kubectl" --kubeconfig="$RUN/kubeconfig" --request-timeout=10s "$@"; }

# kwok's fake nodes, for scale tests: tainted, so that only Pods that tolerate
# kwok.x-k8s.io/node=fake land there; every other Pod runs on the real node.
create_nodes() {
  local i manifest=""
  for i in $(seq 0 $((NODE_COUNT - 1))); do
    manifest+="apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {node.alpha.kubernetes.io/ttl: \"0\", kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/arch: amd64, kubernetes.io/os: linux, kubernetes.io/hostname: kwok-node-$i, type: kwok}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  allocatable: {cpu: \"32\", memory: 256Gi, pods: \"110\"}
  capacity: {cpu: \"32\", memory: 256Gi, pods: \"110\"}
  nodeInfo: {architecture: amd64, kubeletVersion: fake, kubeProxyVersion: fake, operatingSystem: linux}
  phase: Running
---
"
  done
  printf '%s' "$manifest" | kubectl_ apply -f - > /dev/null
}

nodes_ready() {
  [ "$(kubectl_ get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" -ge "$NODE_COUNT" ]
}

# --- Kafka ---------------------------------------------------------------------------

kafka_node_config() { # node id
  local n=$1 i=$(($1 - 1)) voters=() j
  for j in "${!KAFKA_NODES[@]}"; do voters+=("${KAFKA_NODES[$j]}@127.0.0.1:${KAFKA_CONTROLLER_PORTS[$j]}"); done
  local IFS=,
  cat <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=${voters[*]}
listeners=PLAINTEXT://$NODE_IP:${KAFKA_BROKER_PORTS[$i]},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_PORTS[$i]},SSL://127.0.0.1:${KAFKA_SSL_PORTS[$i]}
advertised.listeners=PLAINTEXT://$NODE_IP:${KAFKA_BROKER_PORTS[$i]},SSL://127.0.0.1:${KAFKA_SSL_PORTS[$i]}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$KAFKA_KEYSTORE
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$PKI/ca.crt
log.dirs=$RUN/kafka/data-$n
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=4
# Replicate through 8 fetcher threads (fetch sessions) per source broker instead of 1.
# Every follower fetch makes the leader read, and every wakeup of a parked fetch re-check,
# each partition in that fetch session, not only those with news; with one session per
# broker pair that is every partition the pair shares, and an acks=all answer waits for
# two such fetches from each follower. A shared stack collects thousands of partitions
# from tests (2,700 seen), and then acks=all costs 100s of ms at the median. With 2,640
# partitions, 1 KiB records at 100/s (ProducerPerformance), 2 busy cores: acks=all p50
# 303 -> 10 ms, p99 869 -> 105 ms (1 partition), p50 656 -> 111 ms (6 partitions); idle
# CPU per broker 6.4 -> 9.4 %. A lower replica.fetch.wait.max.ms makes it worse: those
# full reads come more often (50 ms: idle leaders at 20-30 % CPU, acks=all in seconds).
num.replica.fetchers=8
# The same full reads at rest: a parked follower fetch wakes every replica.fetch.wait.max.ms
# (500 ms by default) even with nothing to fetch. With 10,000 RF-3 topics idle the three
# brokers used 72 % of a core at 500 ms and 15 % at 5,000 ms; the 10,000-EventTopic
# benchmark went from 278.8 to 197.9 s. New data still answers a parked fetch at once:
# the first acks=all record to a new topic took 17 ms to 1.1 s either way (15 topics each).
replica.fetch.wait.max.ms=5000
EOF
}

prepare_kafka() {
  mkdir -p "$RUN/kafka"
  cat > "$RUN/kafka/log4j2.properties" <<'EOF'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
  [ -f "$RUN/kafka/cluster-id" ] ||
    java -cp "$KAFKA_DIR/libs/*" kafka.tools.StorageTool random-uuid > "$RUN/kafka/cluster-id"
  local n
  for n in "${KAFKA_NODES[@]}"; do
    kafka_node_config "$n" > "$RUN/kafka/node-$n.properties"
    if [ ! -f "$RUN/kafka/data-$n/meta.properties" ]; then
      java -cp "$KAFKA_DIR/libs/*" -Dlog4j2.configurationFile="$RUN/kafka/tools-log4j2.properties" \
        kafka.tools.StorageTool format -t "$(cat "$RUN/kafka/cluster-id")" -c "$RUN/kafka/node-$n.properties" \
        >> "$RUN/logs/kafka-$n.log" 2>&1 || fail_with_log "kafka-$n storage format failed"
    fi
  done
}

start_kafka() { # node id
  local n=$1
  mkdir -p "$RUN/kafka/logs-$n"
  start "kafka-$n" java -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN/kafka/log4j2.properties" -Dkafka.logs.dir="$RUN/kafka/logs-$n" \
    -cp "$KAFKA_DIR/libs/*" kafka.Kafka "$RUN/kafka/node-$n.properties"
}

kafka_brokers_registered() { # count: the cluster metadata lists at least that many brokers
  [ "$(kcat -b "$(kafka_bootstrap)" -L -m 3 2>/dev/null | sed -n 's/^ *\([0-9]*\) brokers:$/\1/p')" -ge "$1" ]
}

# Not `grep -q` on kcat's metadata: grep would exit at the broker line while kcat still
# writes every topic's partitions, and with a few hundred of them kcat dies of SIGPIPE and
# pipefail fails the check however healthy the broker is.
kafka_broker_in_metadata() { # node id
  kcat -b "$(kafka_bootstrap)" -L -m 3 2>/dev/null | grep "broker $1 at $NODE_IP:" > /dev/null
}

kafka_ssl_listening() { # node id: its SSL port accepts connections
  (: < "/dev/tcp/127.0.0.1/${KAFKA_SSL_PORTS[$(($1 - 1))]}") 2>/dev/null
}

# The broker answers on its SSL listener with a certificate the stack's CA signed for
# 127.0.0.1, and advertises that listener.
kafka_ssl_serves() { # node id
  local port=${KAFKA_SSL_PORTS[$(($1 - 1))]}
  kcat -b "127.0.0.1:$port" -X security.protocol=ssl -X ssl.ca.location="$PKI/ca.crt" -L -m 3 2>/dev/null |
    grep "broker $1 at 127.0.0.1:$port" > /dev/null
}

# A broker started before stack.sh gave it an SSL listener runs without one until it is
# restarted; `up` leaves running brokers alone (other tests may be using them).
kafka_ssl_absent() { # node id
  is_running "kafka-$1" && kafka_broker_in_metadata "$1" && ! kafka_ssl_listening "$1"
}

kafka_ssl_restart_hint() { # node id
  echo "kafka-$1 was started before it had an SSL listener; restart it to add one: e2e/stack.sh kafka-stop $1 && e2e/stack.sh kafka-start $1"
}

# --- external cluster ----------------------------------------------------------------

# When the caller already points at a reachable cluster and Kafka (their kind/k3d and their
# brokers), the stack uses those and builds nothing.
external_stack_reachable() {
  [ -n "${KUBECONFIG:-}" ] && [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || return 1
  [ "$KUBECONFIG" != "$RUN/kubeconfig" ] || return 1
  command -v kubectl >/dev/null && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1 || return 1
  kcat -b "$KAFKA_BOOTSTRAP_SERVERS" -L -m 5 >/dev/null 2>&1
}

# --- commands ------------------------------------------------------------------------

cmd_up() {
  if external_stack_reachable; then
    mkdir -p "$RUN"
    printf 'export KUBECONFIG=%q\nexport KAFKA_BOOTSTRAP_SERVERS=%q\nexport OMNINODE_STACK=external\n' \
      "$KUBECONFIG" "$KAFKA_BOOTSTRAP_SERVERS" > "$RUN/external.env"
    log "using the cluster in KUBECONFIG=$KUBECONFIG and Kafka at $KAFKA_BOOTSTRAP_SERVERS; nothing built or started"
    return 0
  fi
  rm -f "$RUN/external.env"
  require_root up
  local t0=$SECONDS
  build_all
  mkdir -p "$RUN/logs" "$RUN/pids"
  raise_limits

  # The brokers' SSL listeners need the CA and their certificate: a few seconds of openssl.
  make_pki
  make_kafka_tls
  # The node's address comes first: the API server and Kafka serve on it.
  node_up
  # The image builds (cargo, release) while the JVMs and the control plane start.
  log "building and pushing the image (log: $RUN/logs/image.log)"
  PATH="$RUN/bin:$PATH" "$E2E/image.sh" "$REGISTRY" > "$RUN/image.new" 2> "$RUN/logs/image.log" &
  local image_pid=$!
  # Kafka's JVMs start slowest, so they go first and come up while the control plane does.
  prepare_kafka
  local n
  for n in "${KAFKA_NODES[@]}"; do start_kafka "$n"; done

  start_etcd
  wait_until etcd curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
  start_apiserver
  wait_until kube-apiserver https_ok "https://$NODE_IP:$APISERVER_PORT/readyz"
  start_controller_manager
  start_scheduler
  start_kwok
  wait_until kube-controller-manager curl -skf --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  wait_until kube-scheduler curl -skf --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz"
  node_start_agents
  create_nodes
  wait_until kwok nodes_ready
  # The default ServiceAccount is what lets Pods be admitted in a namespace.
  wait_until kube-controller-manager kubectl_ get serviceaccount default -n default

  for n in "${KAFKA_NODES[@]}"; do wait_until "kafka-$n" kafka_broker_in_metadata "$n"; done
  wait_until kafka-1 kafka_brokers_registered "${#KAFKA_NODES[@]}"
  # A broker binds all its listeners before it registers.
  for n in "${KAFKA_NODES[@]}"; do
    if kafka_ssl_absent "$n"; then
      log "note: $(kafka_ssl_restart_hint "$n")"
    else
      wait_until "kafka-$n" kafka_ssl_serves "$n"
    fi
  done
  if ! wait "$image_pid"; then
    printf 'stack: building the image failed; last lines of %s:\n' "$RUN/logs/image.log" >&2
    tail -n 30 "$RUN/logs/image.log" >&2
    exit 1
  fi
  # Its first line is the product's image, its second the volume helper's.
  sed -n 1p "$RUN/image.new" > "$RUN/image"
  sed -n 2p "$RUN/image.new" > "$RUN/helper-image"
  rm -f "$RUN/image.new"
  log "image $(cat "$RUN/image")"
  # Its helper Pods need the helper's image in the registry.
  start_local_path_provisioner "$(cat "$RUN/helper-image")"
  wait_until local-path-provisioner local_path_provisioner_started
  log "stack up in $((SECONDS - t0)) s: Kubernetes v$K8S_VERSION at https://$NODE_IP:$APISERVER_PORT, Kafka $KAFKA_VERSION at $(kafka_bootstrap)"
  log "use it with: eval \"\$(e2e/stack.sh env)\""
}

cmd_env() {
  if [ -f "$RUN/external.env" ]; then
    cat "$RUN/external.env"
  else
    printf 'export KUBECONFIG=%q\nexport KAFKA_BOOTSTRAP_SERVERS=%q\nexport OMNINODE_STACK=local\n' \
      "$RUN/kubeconfig" "$(kafka_bootstrap)"
    # Where Pods reach the host (the API server, Kafka, a test's own servers), and the
    # image the operator's workloads run.
    printf 'export OMNINODE_NODE_IP=%q\nexport OMNINODE_REGISTRY=%q\n' "$NODE_IP" "$REGISTRY"
    # crictl reads it: the node's containerd, not the host's default socket.
    printf 'export CONTAINER_RUNTIME_ENDPOINT=%q\n' "unix://$CONTAINERD_SOCKET"
    [ -f "$RUN/image" ] && printf 'export BRIDGE_WORKLOAD_IMAGE=%q\n' "$(cat "$RUN/image")"
    # busybox (sh, cat, ...), which the volume helper runs: for tests that need a shell.
    [ -f "$RUN/helper-image" ] && printf 'export OMNINODE_BUSYBOX_IMAGE=%q\n' "$(cat "$RUN/helper-image")"
    printf 'export KAFKA_SSL_BOOTSTRAP_SERVERS=%q\nexport KAFKA_SSL_CA_FILE=%q\n' \
      "$(kafka_ssl_bootstrap)" "$PKI/ca.crt"
  fi
  # $PATH stays literal: it expands where the caller evals these lines.
  # shellcheck disable=SC2016
  printf 'export PATH=%q:"$PATH"\n' "$RUN/bin"
}

component_up() {
  case $1 in
    etcd) curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" ;;
    kube-apiserver) https_ok "https://$NODE_IP:$APISERVER_PORT/readyz" ;;
    kube-controller-manager) curl -skf --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz" ;;
    kube-scheduler) curl -skf --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz" ;;
    kwok) is_running kwok && nodes_ready ;;
    registry) is_running registry && registry_serves ;;
    containerd) is_running containerd && test -S "$CONTAINERD_SOCKET" ;;
    kubelet) is_running kubelet && node_ready ;;
    kube-proxy) is_running kube-proxy && curl -sf --max-time 2 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz" ;;
    coredns) is_running coredns && dns_answers ;;
    local-path-provisioner) is_running local-path-provisioner && kubectl_ get storageclass local-path ;;
    kafka-*-ssl)
      local n=${1#kafka-}
      n=${n%-ssl}
      is_running "kafka-$n" && kafka_ssl_serves "$n"
      ;;
    kafka-*) is_running "$1" && kafka_broker_in_metadata "${1#kafka-}" ;;
  esac
}

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler registry containerd kubelet kube-proxy
  coredns local-path-provisioner kwok kafka-1 kafka-2 kafka-3 kafka-1-ssl kafka-2-ssl kafka-3-ssl)

# A listener absent because its broker predates it is said so, and fails nothing: `up`
# does not restart running brokers, so such a stack is as up as `up` leaves it.
cmd_status() {
  local c n all=0
  for c in "${COMPONENTS[@]}"; do
    if component_up "$c" >/dev/null 2>&1; then
      printf '%-24s up\n' "$c"
    elif [[ $c == kafka-*-ssl ]] && n=${c#kafka-} && n=${n%-ssl} && kafka_ssl_absent "$n"; then
      printf '%-24s absent: %s\n' "$c" "$(kafka_ssl_restart_hint "$n")"
    else
      printf '%-24s down\n' "$c"
      all=1
    fi
  done
  return $all
}

cmd_down() {
  require_root down
  # The node first, while the API server still answers its last status updates.
  node_down
  stop kafka-1 kafka-2 kafka-3
  stop kwok
  stop kube-scheduler kube-controller-manager
  stop kube-apiserver
  stop etcd
  log "stopped, and the node's changes to the host undone; caches in $CACHE and run data in $RUN are kept"
}

brokers_arg() { # broker ids: 1, 2 or 3, at least one
  [ $# -gt 0 ] || die "name one or more brokers: 1, 2 or 3"
  local n
  for n in "$@"; do
    case $n in
      1 | 2 | 3) ;;
      *) die "no broker '$n': name 1, 2 or 3" ;;
    esac
  done
}

# Several brokers stop together and start together: a lone broker of a three-voter quorum
# can neither shut down cleanly nor register until a second one is back.
cmd_kafka_stop() {
  brokers_arg "$@"
  local n names=()
  for n in "$@"; do names+=("kafka-$n"); done
  stop "${names[@]}"
  log "stopped ${names[*]}"
}

cmd_kafka_start() {
  brokers_arg "$@"
  local n
  for n in "$@"; do start_kafka "$n"; done
  for n in "$@"; do wait_until "kafka-$n" kafka_broker_in_metadata "$n"; done
  log "started and registered: broker(s) $*"
}

case ${1:-} in
  up) cmd_up ;;
  env) cmd_env ;;
  status) cmd_status ;;
  down) cmd_down ;;
  build) build_all ;;
  kafka-stop) cmd_kafka_stop "${@:2}" ;;
  kafka-start) cmd_kafka_start "${@:2}" ;;
  *)
    sed -n '8,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
