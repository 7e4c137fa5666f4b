# shellcheck shell=bash
# The stack's real node, sourced by e2e/stack.sh: containerd with runc and the CNI
# plugins, kubelet, kube-proxy, CoreDNS, the image registry our Pods pull from and
# local-path-provisioner, which gives claims of the default StorageClass a directory here.
#
# Pods cannot reach the host's 127.0.0.1 (their loopback is their own), so the stack puts
# one host address, NODE_IP, on an interface of its own and serves the API server, Kafka,
# DNS and the kubelet there. NODE_IP, the Pod range and the Service range are all in
# 198.18.0.0/15 (RFC 2544: never routed on the internet, not a private network), and a
# route sends the whole range to that interface, so this traffic stays on the machine.
# The interface is a bridge with no ports: it drops what it is sent, as a dummy interface
# would (these kernels have no dummy driver).
#
# A node uses host-wide names (the interface, the CNI bridge, iptables chains, cgroups,
# a few fixed paths), so one machine runs one node: the stack that started it owns it,
# and `down` in that stack removes everything it changed (NODE_CHANGES lists it).

NODE_NAME=omninode-node
NODE_IP=198.18.0.1
NODE_INTERFACE=omninode0
NODE_BRIDGE=omninode-cni0
NODE_POD_CIDR=198.18.64.0/20
NODE_POD_GATEWAY=198.18.64.1
# Used by stack.sh, which sources this file.
# shellcheck disable=SC2034
SERVICE_CIDR=198.19.0.0/16
# shellcheck disable=SC2034
KUBERNETES_SERVICE_IP=198.19.0.1
UNROUTED_RANGE=198.18.0.0/15
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
KUBE_PROXY_HEALTHZ_PORT=10256
KUBE_PROXY_METRICS_PORT=10249
# Host-wide state lives under one directory in /run, so `down` (and a reboot) clears it.
NODE_RUN=/run/omninode-bridge
CONTAINERD_SOCKET=$NODE_RUN/containerd/containerd.sock
# The stack that owns the node: its run directory.
NODE_OWNER_FILE=$NODE_RUN/owner
# Everything else a node keeps (images, kubelet's pod directories, logs) is run data.
NODE_DIR=$RUN/node

CONTAINERD_VERSION=2.4.2
RUNC_VERSION=1.5.3
CNI_PLUGINS_VERSION=1.10.0
CRANE_VERSION=0.22.1
COREDNS_VERSION=1.15.0
CRI_TOOLS_VERSION=1.36.0
LOCAL_PATH_PROVISIONER_VERSION=0.0.30

KUBELET_DIR=$CACHE/kubelet-$K8S_VERSION
CONTAINERD_DIR=$CACHE/containerd-$CONTAINERD_VERSION
RUNC_DIR=$CACHE/runc-$RUNC_VERSION
CNI_DIR=$CACHE/cni-plugins-$CNI_PLUGINS_VERSION
CRANE_DIR=$CACHE/crane-$CRANE_VERSION
COREDNS_DIR=$CACHE/coredns-$COREDNS_VERSION
CRI_TOOLS_DIR=$CACHE/cri-tools-$CRI_TOOLS_VERSION
LOCAL_PATH_DIR=$CACHE/local-path-provisioner-$LOCAL_PATH_PROVISIONER_VERSION

REGISTRY_PORT=$((15000 + P))
REGISTRY=127.0.0.1:$REGISTRY_PORT
PAUSE_IMAGE=$REGISTRY/omninode/pause:3.10-omninode

# Dynamic volumes: local-path-provisioner makes each claim of the StorageClass local-path
# (the default) a directory under LOCAL_PATH_DATA, through helper Pods in its namespace.
LOCAL_PATH_NAMESPACE=local-path-storage
LOCAL_PATH_PROVISIONER_NAME=rancher.io/local-path
LOCAL_PATH_DATA=$NODE_DIR/local-path
# The provisioner's identity: a user of the stack's CA, granted what upstream's manifest
# grants its ServiceAccount. The ServiceAccount still exists: the helper Pods name it.
LOCAL_PATH_USER=omninode:local-path-provisioner
LOCAL_PATH_SERVICE_ACCOUNT=local-path-provisioner-service-account

# --- builds --------------------------------------------------------------------------

# kubelet and kube-proxy, from the same Kubernetes module and version stamp as the control
# plane; after it, so the shared packages come from Go's build cache.
build_kubelet() {
  [ -x "$KUBELET_DIR/bin/kubelet" ] && return 0
  go_env
  rm -rf "$KUBELET_DIR/bin.tmp" && mkdir -p "$KUBELET_DIR/bin.tmp"
  (cd "$E2E/k8s" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$KUBELET_DIR/bin.tmp/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  mv "$KUBELET_DIR/bin.tmp" "$KUBELET_DIR/bin"
}

# go_install DIR PACKAGE@VERSION...: a module without replace directives, built at its tag.
go_install() {
  local dir=$1
  shift
  [ -d "$dir/bin" ] && return 0
  rm -rf "$dir/bin.tmp" && mkdir -p "$dir/bin.tmp"
  local package
  for package in "$@"; do
    GOBIN="$dir/bin.tmp" go install -trimpath -ldflags "-s -w" "$package"
  done
  mv "$dir/bin.tmp" "$dir/bin"
}

build_containerd() {
  go_env
  local m=github.com/containerd/containerd/v2/cmd
  go_install "$CONTAINERD_DIR" "$m/containerd@v$CONTAINERD_VERSION" \
    "$m/containerd-shim-runc-v2@v$CONTAINERD_VERSION" "$m/ctr@v$CONTAINERD_VERSION"
}

# runc needs cgo for seccomp (apt: libseccomp-dev, pkg-config).
build_runc() {
  go_env
  CGO_ENABLED=1 GOFLAGS="$GOFLAGS -tags=seccomp" go_install "$RUNC_DIR" "github.com/opencontainers/runc@v$RUNC_VERSION"
}

build_cni_plugins() {
  go_env
  local m=github.com/containernetworking/plugins/plugins
  go_install "$CNI_DIR" "$m/main/bridge@v$CNI_PLUGINS_VERSION" "$m/main/loopback@v$CNI_PLUGINS_VERSION" \
    "$m/ipam/host-local@v$CNI_PLUGINS_VERSION" "$m/meta/portmap@v$CNI_PLUGINS_VERSION"
}

build_crane() {
  go_env
  go_install "$CRANE_DIR" "github.com/google/go-containerregistry/cmd/crane@v$CRANE_VERSION"
}

build_coredns() {
  go_env
  go_install "$COREDNS_DIR" "github.com/coredns/coredns@v$COREDNS_VERSION"
}

# crictl: what `down` stops and removes Pod sandboxes with, through the CRI, so that
# containerd tears their networks down as kubelet would.
build_cri_tools() {
  go_env
  go_install "$CRI_TOOLS_DIR" "sigs.k8s.io/cri-tools/cmd/crictl@v$CRI_TOOLS_VERSION"
}

# The provisioner runs as a process of the stack, like CoreDNS: no image of its own to build.
build_local_path_provisioner() {
  go_env
  go_install "$LOCAL_PATH_DIR" "github.com/rancher/local-path-provisioner@v$LOCAL_PATH_PROVISIONER_VERSION"
}

# --- host ----------------------------------------------------------------------------

require_root() {
  [ "$(id -u)" = 0 ] || die "the stack runs a real node (kubelet, containerd, iptables, a network interface), which needs root: run it as root (sudo -E e2e/stack.sh $*)"
}

# Refuses a second node on this machine: a stack with another run directory that runs one.
node_claim() {
  mkdir -p "$NODE_RUN"
  if [ -f "$NODE_OWNER_FILE" ]; then
    local owner
    owner=$(cat "$NODE_OWNER_FILE")
    if [ "$owner" != "$RUN" ] && [ -d "$owner" ] && node_processes_running "$owner"; then
      die "this machine's node is run by the stack in $owner; a machine runs one node. Use that stack (OMNINODE_RUN_DIR=$owner) or stop it first (OMNINODE_RUN_DIR=$owner e2e/stack.sh down)"
    fi
  fi
  echo "$RUN" > "$NODE_OWNER_FILE"
}

node_processes_running() { # run dir
  local name f
  for name in containerd kubelet kube-proxy coredns; do
    f=$1/pids/$name.pid
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && return 0
  done
  return 1
}

node_owned_here() { [ "$(cat "$NODE_OWNER_FILE" 2>/dev/null)" = "$RUN" ]; }

# Remembers a sysctl's value before the node first changes it, so `down` puts it back.
sysctl_set() { # key value
  local key=$1 file=$NODE_RUN/sysctl
  grep -q "^$key=" "$file" 2>/dev/null || echo "$key=$(sysctl -n "$key")" >> "$file"
  sysctl -qw "$key=$2"
}

sysctls_restore() {
  local line
  [ -f "$NODE_RUN/sysctl" ] || return 0
  while IFS= read -r line; do sysctl -qw "$line" || log "could not restore $line"; done < "$NODE_RUN/sysctl"
  rm -f "$NODE_RUN/sysctl"
}

# Fixed host paths a node writes to whatever its configuration says; each one `up` found
# missing is recorded, so `down` removes exactly those.
NODE_FIXED_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /etc/cni
  /opt/containerd /var/lib/containerd)

node_network_up() {
  local p
  for p in "${NODE_FIXED_PATHS[@]}"; do
    [ -e "$p" ] || grep -qx "$p" "$NODE_RUN/created" 2>/dev/null || echo "$p" >> "$NODE_RUN/created"
  done
  [ -d /proc/sys/net/bridge ] || die "the kernel has no br_netfilter (/proc/sys/net/bridge): kube-proxy needs it for Pods on the bridge to reach Services; load it (modprobe br_netfilter)"
  grep -qw overlay /proc/filesystems || die "the kernel has no overlay filesystem, which containerd's snapshotter needs; load it (modprobe overlay)"
  if ! ip link show "$NODE_INTERFACE" >/dev/null 2>&1; then
    ip link add "$NODE_INTERFACE" type bridge
  fi
  ip addr replace "$NODE_IP/32" dev "$NODE_INTERFACE"
  ip link set "$NODE_INTERFACE" up
  # The whole range goes to that interface (which drops what no Pod or host address
  # takes): nothing in it ever leaves through the machine's own network.
  ip route replace "$UNROUTED_RANGE" dev "$NODE_INTERFACE" src "$NODE_IP"
  # Pods reach Services through kube-proxy's iptables rules, also Pods on the same bridge.
  sysctl_set net.bridge.bridge-nf-call-iptables 1
  sysctl_set net.ipv4.ip_forward 1
}

# --- configuration -------------------------------------------------------------------

make_node_pki() {
  mkdir -p "$NODE_DIR"
  [ "$PKI/kubelet.crt" -nt "$PKI/ca.crt" ] && [ -f "$NODE_DIR/kube-proxy.kubeconfig" ] && return 0
  (
    cd "$PKI"
    # kubelet's client identity: the Node authorizer lets system:node:<name> touch only
    # its own Node and the Pods bound to it.
    client_cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME"
    # kube-proxy's: the built-in ClusterRoleBinding system:node-proxier grants it.
    client_cert kube-proxy /CN=system:kube-proxy
    # kubelet's serving certificate, which the API server checks for logs and exec.
    openssl req -newkey rsa:2048 -nodes -keyout kubelet.key -out kubelet.csr -subj "/CN=$NODE_NAME"
    printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME" > kubelet.ext
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet.crt -days 3650 -extfile kubelet.ext
    rm -f ./*.csr ./*.ext
  ) >> "$RUN/logs/pki.log" 2>&1 || fail_with_log "pki generation for the node failed"
  kubeconfig_for kubelet-client > "$NODE_DIR/kubelet.kubeconfig"
  kubeconfig_for kube-proxy > "$NODE_DIR/kube-proxy.kubeconfig"
}

# write_config FILE: stdin into FILE, only when it differs: kube-proxy exits when its
# configuration file changes under it, and the others would not notice a change anyway.
write_config() {
  local new
  new=$(cat)
  [ -f "$1" ] && [ "$(cat "$1")" = "$new" ] && return 0
  printf '%s\n' "$new" > "$1"
}

write_node_config() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/certs.d/$REGISTRY" "$NODE_DIR/pod-logs" "$NODE_RUN/containerd"
  # containerd pulls from the stack's registry over plain HTTP on loopback.
  write_config "$NODE_DIR/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  write_config "$NODE_DIR/cni/net.d/10-omninode.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "omninode",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # No systemd here (cgroupfs), and no CAP_SYS_RESOURCE: runc may not lower a container's
  # oom_score_adj below its own, so containerd asks for no more than that.
  write_config "$NODE_DIR/containerd.toml" <<EOF
version = 4
root = "$NODE_DIR/containerd"
state = "$NODE_RUN/containerd/state"

# Sockets of its own, not the host's default /run/containerd.
[plugins."io.containerd.server.v1.grpc"]
  address = "$CONTAINERD_SOCKET"

[plugins."io.containerd.server.v1.ttrpc"]
  address = "$NODE_RUN/containerd/ttrpc.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$NODE_DIR/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  # Network namespace pins under the state directory, not in the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_DIR/bin"]
    conf_dir = "$NODE_DIR/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "$RUNC_DIR/bin/runc"
      SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"

# No NRI plugins here; its socket would be a fixed host path.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
EOF
  write_config "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
# PID 1 is not systemd, and the host's cgroups are v1 (hybrid).
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
# The host's resolv.conf names resolvers Pods must not use: traffic stays on this machine.
resolvConf: ""
podLogsDir: $NODE_DIR/pod-logs
serializeImagePulls: false
# A shared development machine: evict nothing for disk or memory pressure the tests did
# not cause.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOF
  write_config "$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $NODE_DIR/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $NODE_POD_CIDR
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
# NodePorts only on the node's own address, never on the machine's network.
nodePortAddresses: [$NODE_IP/32]
iptables:
  localhostNodePorts: false
# Leave the host's conntrack table settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  # Cluster names only, answered from the API; anything else is NXDOMAIN, never forwarded.
  write_config "$NODE_DIR/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
  bind $NODE_IP
  errors
  kubernetes cluster.local in-addr.arpa ip6.arpa {
    kubeconfig $RUN/kubeconfig omninode-e2e
    pods insecure
  }
  cache 5
}
.:53 {
  bind $NODE_IP
  errors
  template ANY ANY {
    rcode NXDOMAIN
  }
}
EOF
}

# --- processes -----------------------------------------------------------------------

start_registry() {
  mkdir -p "$RUN/registry"
  start registry "$CRANE_DIR/bin/crane" registry serve --address "$REGISTRY" --disk "$RUN/registry"
}

start_containerd() {
  start containerd env PATH="$CONTAINERD_DIR/bin:$RUNC_DIR/bin:$PATH" \
    "$CONTAINERD_DIR/bin/containerd" --config "$NODE_DIR/containerd.toml"
}

start_kubelet() {
  start kubelet "$KUBELET_DIR/bin/kubelet" --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" --root-dir="$NODE_DIR/kubelet" \
    --cert-dir="$NODE_DIR/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels=omninode.io/node=real
}

start_kube_proxy() {
  start kube-proxy "$KUBELET_DIR/bin/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml"
}

start_coredns() {
  start coredns "$COREDNS_DIR/bin/coredns" -conf "$NODE_DIR/Corefile"
}

# --- dynamic volumes -----------------------------------------------------------------

# local-path-provisioner's client identity: a certificate of its own, with its own guard,
# so that adding it to a running stack leaves the node's certificates alone.
make_local_path_identity() {
  [ "$PKI/local-path-provisioner.crt" -nt "$PKI/ca.crt" ] && [ -f "$NODE_DIR/local-path-provisioner.kubeconfig" ] && return 0
  (cd "$PKI" && client_cert local-path-provisioner "/CN=$LOCAL_PATH_USER") >> "$RUN/logs/pki.log" 2>&1 ||
    fail_with_log "pki generation for local-path-provisioner failed"
  kubeconfig_for local-path-provisioner > "$NODE_DIR/local-path-provisioner.kubeconfig"
}

# local_path_manifest HELPER_IMAGE: what the provisioner needs in the cluster, after
# upstream's deploy/local-path-storage.yaml: its namespace, RBAC (bound to the stack's
# user instead of the ServiceAccount it would run as), the ConfigMap it reads its
# configuration and helper Pod from, and the default StorageClass.
#
# Only the real node is in nodePathMap: the provisioner binds its helper Pods to the
# claim's node itself (spec.nodeName, tolerating every taint), so a claim on a kwok node
# must fail here rather than "succeed" in a fake Pod. The helper runs as root (it makes the
# directory in one root owns, and removes what the workload wrote), mode 0777 so that the
# workload writes as whatever user it runs as (the receivers: 65532). Its hostPath volume
# is beyond the baseline Pod Security level, so the namespace says privileged outright.
local_path_manifest() {
  local helper_image=$1
  cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $LOCAL_PATH_NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: privileged
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: $LOCAL_PATH_SERVICE_ACCOUNT
  namespace: $LOCAL_PATH_NAMESPACE
automountServiceAccountToken: false
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: local-path-provisioner-role
rules:
- apiGroups: [""]
  resources: [nodes, persistentvolumeclaims, configmaps, pods, pods/log]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [persistentvolumes]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: local-path-provisioner-bind
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: local-path-provisioner-role}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "$LOCAL_PATH_USER"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: local-path-provisioner-role
  namespace: $LOCAL_PATH_NAMESPACE
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: local-path-provisioner-bind
  namespace: $LOCAL_PATH_NAMESPACE
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: local-path-provisioner-role}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "$LOCAL_PATH_USER"}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-path-config
  namespace: $LOCAL_PATH_NAMESPACE
data:
  config.json: |-
    {"nodePathMap": [{"node": "$NODE_NAME", "paths": ["$LOCAL_PATH_DATA"]}]}
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata:
      name: helper-pod
    spec:
      automountServiceAccountToken: false
      containers:
      - name: helper-pod
        image: $helper_image
        securityContext:
          runAsUser: 0
          runAsGroup: 0
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL], add: [DAC_OVERRIDE, FOWNER]}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: $LOCAL_PATH_PROVISIONER_NAME
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
}

# Applies the manifest at every `up` (it repairs what was changed by hand) and starts the
# provisioner. It reads the ConfigMap once, at start: a running one is restarted when the
# manifest changed (a new helper image, say).
start_local_path_provisioner() { # helper image
  local dir=$RUN/local-path
  mkdir -p "$dir"
  make_local_path_identity
  local_path_manifest "$1" > "$dir/manifest.yaml.new"
  kubectl_ apply -f "$dir/manifest.yaml.new" > /dev/null
  if ! cmp -s "$dir/manifest.yaml.new" "$dir/manifest.yaml"; then
    mv "$dir/manifest.yaml.new" "$dir/manifest.yaml"
    if is_running local-path-provisioner; then
      log "local-path-provisioner's configuration changed; restarting it"
      stop local-path-provisioner
    fi
  else
    rm -f "$dir/manifest.yaml.new"
  fi
  is_running local-path-provisioner && return 0
  # Readiness is a line in its log: only what this start writes counts.
  stat -c %s "$RUN/logs/local-path-provisioner.log" > "$dir/log-offset" 2>/dev/null || echo 0 > "$dir/log-offset"
  # --helper-image is required, though v0.0.30 takes the helper's image from helperPod.yaml.
  start local-path-provisioner "$LOCAL_PATH_DIR/bin/local-path-provisioner" start \
    --kubeconfig "$NODE_DIR/local-path-provisioner.kubeconfig" \
    --provisioner-name "$LOCAL_PATH_PROVISIONER_NAME" --namespace "$LOCAL_PATH_NAMESPACE" \
    --configmap-name local-path-config --service-account-name "$LOCAL_PATH_SERVICE_ACCOUNT" \
    --helper-image "$1"
}

local_path_provisioner_started() {
  # Not `grep -q`: it exits at the first match, and with more than a pipe's worth of log
  # after the offset, tail then dies of SIGPIPE and pipefail makes the check fail.
  tail -c "+$(($(cat "$RUN/local-path/log-offset") + 1))" "$RUN/logs/local-path-provisioner.log" |
    grep 'Started provisioner controller' > /dev/null
}

crictl_() { "$CRI_TOOLS_DIR/bin/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCKET" --timeout 20s "$@"; }

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

registry_serves() { curl -sf --max-time 2 "http://$REGISTRY/v2/" ; }

dns_answers() { # the API server's Service name resolves through CoreDNS
  dns_query kubernetes.default.svc.cluster.local
}

# dns_query NAME: one A query to the node's DNS, without dig (not installed); succeeds
# when it answers with at least one record.
dns_query() {
  python3 - "$NODE_IP" "$1" <<'PY'
import socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(query, (server, 53))
answer = s.recv(512)
sys.exit(0 if answer[3] & 0x0F == 0 and struct.unpack(">H", answer[6:8])[0] > 0 else 1)
PY
}

node_up() {
  node_claim
  node_network_up
  make_node_pki
  write_node_config
  start_registry
  start_containerd
  wait_until containerd test -S "$CONTAINERD_SOCKET"
  wait_until registry registry_serves
}

# After the API server: kubelet registers the node, kube-proxy and CoreDNS watch it.
node_start_agents() {
  start_kubelet
  start_kube_proxy
  start_coredns
  wait_until kubelet node_ready
  wait_until kube-proxy curl -sf --max-time 2 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
  wait_until coredns dns_answers
}

# --- down ----------------------------------------------------------------------------

# Removes every Pod sandbox through the CRI (containerd stops the containers, calls CNI DEL
# and unmounts their network namespaces), then stops the node's processes and undoes what
# the node changed on the host; the volumes' directories stay (see below).
node_down() {
  node_owned_here || return 0
  # Before the kubelet: no helper Pod started that none would run.
  stop local-path-provisioner
  stop kubelet
  if is_running containerd && [ -x "$CRI_TOOLS_DIR/bin/crictl" ]; then
    local sandboxes
    mapfile -t sandboxes < <(crictl_ pods -q 2>/dev/null)
    [ ${#sandboxes[@]} -eq 0 ] || crictl_ stopp "${sandboxes[@]}" >/dev/null 2>&1 || true
    crictl_ rmp -a -f >/dev/null 2>&1 || true
  fi
  stop containerd kube-proxy coredns registry
  # Shims whose containers survived (none, normally): they belong to this node's state dir.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCKET" 2>/dev/null || true
  if [ -x "$KUBELET_DIR/bin/kube-proxy" ]; then
    "$KUBELET_DIR/bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  iptables_remove_kube_chains
  node_unmount_all
  # The claims' data stays, as their PersistentVolumes stay in etcd: a claim keeps what it
  # held across `down` and `up` (a receiver's spool its events). Deleted, each came back as
  # an empty directory the kubelet made, root's and mode 0755, which the receivers (uid
  # 65532) cannot write: they crash-looped on "cannot open the spool". local-path deletes
  # a volume's directory when its claim goes.
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_INTERFACE" 2>/dev/null || true
  cgroups_remove kubepods
  sysctls_restore
  local p
  if [ -f "$NODE_RUN/created" ]; then
    while IFS= read -r p; do rm -rf "$p"; done < "$NODE_RUN/created"
  fi
  rm -rf "$NODE_RUN"
}

# kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and anything of
# kube-proxy's that --cleanup left, IPv4 and IPv6: the jumps to them from the built-in chains first (by
# rule number, highest first, since their comments do not survive word splitting), then
# the chains themselves.
iptables_remove_kube_chains() {
  local tool table chain number chains
  for tool in iptables ip6tables; do
    for table in filter nat mangle; do
      for chain in $("$tool" -t "$table" -S 2>/dev/null | sed -n 's/^-P \([A-Z]*\) .*/\1/p'); do
        for number in $("$tool" -t "$table" -L "$chain" -n --line-numbers 2>/dev/null |
          awk '$2 ~ /^KUBE-/ {print $1}' | sort -rn); do
          "$tool" -t "$table" -D "$chain" "$number" 2>/dev/null || true
        done
      done
      chains=$("$tool" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p')
      for chain in $chains; do "$tool" -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in $chains; do "$tool" -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}

# Every mount under the node's directories, deepest first (volumes inside the kubelet's
# bind mount of its own root, netns pins, overlay root filesystems).
node_unmount_all() {
  local m
  awk '{print $5}' /proc/self/mountinfo | { grep -E "^($NODE_DIR|$NODE_RUN|/run/containerd|/var/lib/kubelet)(/|$)" || true; } |
    sort -r | while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
}

cgroups_remove() { # top-level cgroup name, under each v1 hierarchy and the v2 one
  local root dir
  for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    dir=$root$1
    [ -d "$dir" ] || continue
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}
