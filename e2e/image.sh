#!/usr/bin/env bash
# The product's container images, built without Docker, and pushed to a registry:
#
#   e2e/image.sh HOST:PORT     build omninode/bridge, omninode/event-printer, omninode/pause and
#                              omninode/busybox, push them over plain HTTP (a loopback
#                              registry), print the bridge image reference, then busybox's
#
# omninode/bridge holds bridge-operator, hook-receiver and event-consumer in /usr/local/bin
# and only the runtime files they need, taken from the Debian 12 packages pinned in
# e2e/image/packages.txt: the dynamic loader and the shared libraries the binaries link, the
# CA bundle, a passwd and group with root and nonroot (65532). No shell, no package manager.
# It is tagged <version> and <version>-<short commit>; the second, with the digest, is the
# first line this prints on stdout (logs go to stderr), e.g.
# 127.0.0.1:5000/omninode/bridge:0.1.0-abc1234@sha256:...: a build with uncommitted changes
# keeps the commit's tag, and the digest is what tells a node it must pull again.
#
# omninode/event-printer is the demo's sink (e2e/src/bin/event-printer.rs) on the same
# runtime layer, tagged like the bridge image; never part of the product.
#
# omninode/pause is containerd's sandbox image (there is none offline): e2e/image/pause.c,
# static, as the image's only file. Tagged 3.10-omninode.
#
# omninode/busybox is the stack's volume helper (local-path-provisioner's helper Pods make
# and remove volume directories with it, and tests write into volumes with it): the static
# busybox of the pinned Debian package busybox-static and links for the few applets those
# scripts run, user 65532 by default. Tagged with the package's version (no epoch, `+` as
# `-`: a tag allows neither), e.g. 1.35.0-4-deb12u1-b1; its reference with the digest is the
# second line on stdout. Never part of the product.
#
# All are reproducible: from the same commit and the same release binaries (and the same
# tar, gzip and gcc with its static libc) the same image digest. Layers are tarred in name order with one timestamp, root ownership and normalized
# modes, gzip stores no name or time, and the image config and manifest are written here
# (crane append/mutate would stamp the build time into `created` and the history) and
# pushed as an OCI layout with `crane push`. The timestamp is SOURCE_DATE_EPOCH, by default
# the commit's time; the runtime layer and the pause image use the time of the last commit
# that changed their inputs (this script, e2e/image/), so they keep their digests from one
# commit to the next and a node pulls only the binaries' layer of a new version.
#
# Needs: cargo, crane, apt-get and dpkg-deb (a Debian 12 host: the binaries link against
# its glibc, which must be the pinned one or older), gcc with the static libc (libc6-dev),
# readelf, GNU tar, gzip, sha256sum. Pinned .debs are cached under
# ~/.cache/omninode-bridge/image-debs/ (OMNINODE_CACHE_DIR moves the cache).
set -euo pipefail
shopt -s nullglob

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE_INPUTS=$REPO/e2e/image
CACHE=${OMNINODE_CACHE_DIR:-$HOME/.cache/omninode-bridge}
DEB_CACHE=$CACHE/image-debs
BINARIES=(bridge-operator hook-receiver event-consumer)
BRIDGE_NAME=omninode/bridge
PRINTER_NAME=omninode/event-printer
PAUSE_NAME=omninode/pause
# Fixed, not versioned with the product: the node's containerd config names it as its sandbox
# image (e2e/node.sh). It stands in for upstream's pause 3.10.
PAUSE_TAG=3.10-omninode
BUSYBOX_NAME=omninode/busybox
# The pin the busybox image is made of, not a runtime file of the others.
BUSYBOX_PACKAGE=busybox-static
# What the volume helper's setup and teardown scripts and the tests' writers run.
BUSYBOX_APPLETS=(sh mkdir rm chmod cat ls sleep)
# Every lib directory of the multiarch layout: the loader searches these without an
# ld.so.cache, and the pinned packages put their libraries there.
LIB_DIRS=(lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu)

log() { printf '%s image: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

usage() { die "usage: e2e/image.sh HOST:PORT (a registry served over plain HTTP, e.g. 127.0.0.1:5000)"; }

[ $# -eq 1 ] || usage
REGISTRY=$1
[[ $REGISTRY =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || usage

for tool in cargo crane git apt-get dpkg-deb gcc readelf tar gzip sha256sum; do
  command -v "$tool" > /dev/null || die "$tool is not on PATH"
done
# The pins are bookworm's, and the binaries take their glibc symbol versions from the host:
# built on a newer release they would not load on the pinned glibc.
# shellcheck disable=SC1091
codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
[ "$codename" = bookworm ] ||
  die "the image's runtime is pinned to Debian 12 (bookworm); this host is '${codename:-unknown}'"

# ---- versions and timestamps -------------------------------------------------------------

# [workspace.package] has no version today; the operator's crate carries the product's.
workspace_version() {
  local version
  version=$(awk '/^\[/ {in_section = ($0 == "[workspace.package]")}
                 in_section && $1 == "version" {gsub(/[" ]/, "", $3); print $3; exit}' "$REPO/Cargo.toml")
  [ -n "$version" ] ||
    version=$(awk '/^\[/ {in_section = ($0 == "[package]")}
                   in_section && $1 == "version" {gsub(/[" ]/, "", $3); print $3; exit}' "$REPO/operator/Cargo.toml")
  [ -n "$version" ] || die "no version in Cargo.toml's [workspace.package] nor in operator/Cargo.toml"
  printf '%s' "$version"
}

VERSION=$(workspace_version)
COMMIT=$(git -C "$REPO" rev-parse HEAD)
SHORT=$(git -C "$REPO" rev-parse --short=7 HEAD)
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct HEAD)}
# The runtime layer and the pause image change only with their inputs; until those are
# committed, the commit's time stands in.
INPUTS_EPOCH=$(git -C "$REPO" log -1 --format=%ct HEAD -- e2e/image.sh e2e/image)
INPUTS_EPOCH=${INPUTS_EPOCH:-$SOURCE_DATE_EPOCH}
# Not exported: the cc crate's build scripts (ring, openssl-sys, libz-sys, ...) rerun when
# SOURCE_DATE_EPOCH changes, so an exported one, new with every commit, rebuilt the whole
# release from ring up (6 to 7 minutes) at every `stack.sh up` after a commit.
[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] ||
  log "warning: the working tree has uncommitted changes; the image carries them but is labelled $SHORT"

# ---- the release binaries ----------------------------------------------------------------

target_dir() {
  (cd "$REPO" && cargo metadata --format-version 1 --no-deps) |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

log "cargo build --release (${BINARIES[*]} event-printer)"
(cd "$REPO" && cargo build --release --locked -p bridge-operator -p hook-receiver -p event-consumer --bins \
  -p bridge-e2e --bin event-printer) >&2 || die "cargo build --release failed"
TARGET=$(target_dir)
[ -n "$TARGET" ] || die "could not find cargo's target directory (cargo metadata)"
for binary in "${BINARIES[@]}" event-printer; do
  [ -x "$TARGET/release/$binary" ] || die "cargo built no $TARGET/release/$binary"
done

started=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/omninode-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- the pinned Debian packages ----------------------------------------------------------

# name=version lines, comments and blank lines skipped.
read_pins() {
  sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$IMAGE_INPUTS/packages.txt"
}

# The cached .deb of one pin, downloaded when missing. apt-get download verifies it against
# the archive's signed index; the name and version are checked again here, so that a stray
# file in the cache cannot stand in for the pin.
fetch_deb() {
  local name=$1 version=$2 debs staging
  debs=("$DEB_CACHE/${name}_${version//:/%3a}_"*.deb)
  if [ ${#debs[@]} -eq 0 ]; then
    log "downloading $name=$version"
    staging=$(mktemp -d "$WORK/download.XXXXXX")
    # As root, apt-get downloads as the _apt user, who cannot write into root's private
    # directories, and falls back to root with a warning: ask for root at once.
    local sandbox=()
    [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
    if ! (cd "$staging" && apt-get download -q "${sandbox[@]}" "$name=$version") > "$WORK/apt.log" 2>&1; then
      die "pinned package $name=$version is no longer downloadable ($(grep -m1 '^E:' "$WORK/apt.log" || tail -n1 "$WORK/apt.log")); update its line in e2e/image/packages.txt to the Candidate of 'apt-get update && apt-cache policy $name'"
    fi
    debs=("$staging/"*.deb)
    [ ${#debs[@]} -eq 1 ] || die "apt-get download $name=$version gave ${#debs[@]} files"
    mkdir -p "$DEB_CACHE"
    mv "${debs[0]}" "$DEB_CACHE/"
    debs=("$DEB_CACHE/$(basename "${debs[0]}")")
  fi
  [ "$(dpkg-deb -f "${debs[0]}" Package)=$(dpkg-deb -f "${debs[0]}" Version)" = "$name=$version" ] ||
    die "${debs[0]} is not $name=$version; remove it from the cache"
  printf '%s' "${debs[0]}"
}

# Every pinned package unpacked into one tree, as dpkg would install them (without their
# maintainer scripts): the pool the runtime layer takes its files from.
PKGROOT=$WORK/packages
PACKAGES=()
BUSYBOX_VERSION=
mkdir -p "$PKGROOT"
while IFS='=' read -r name version; do
  [ -n "$version" ] || die "e2e/image/packages.txt: '$name' has no =version"
  deb=$(fetch_deb "$name" "$version")
  dpkg-deb -x "$deb" "$PKGROOT"
  PACKAGES+=("$name")
  [ "$name" != "$BUSYBOX_PACKAGE" ] || BUSYBOX_VERSION=$version
done < <(read_pins)
[ ${#PACKAGES[@]} -gt 0 ] || die "e2e/image/packages.txt pins no package"
[ -n "$BUSYBOX_VERSION" ] || die "e2e/image/packages.txt pins no $BUSYBOX_PACKAGE (the volume helper image's busybox)"
BUSYBOX_TAG=${BUSYBOX_VERSION#*:}
BUSYBOX_TAG=${BUSYBOX_TAG//+/-}

# ---- the runtime layer: loader, libraries, CA bundle, users ------------------------------

BASE=$WORK/base
mkdir -p "$BASE"

# Copies PATH (absolute in the image) from the package pool into the runtime layer; a
# symlink is copied as a symlink and its target follows it.
copy_from_packages() {
  local path=${1#/} target
  if [ -e "$BASE/$path" ] || [ -L "$BASE/$path" ]; then return 0; fi
  mkdir -p "$(dirname "$BASE/$path")"
  if [ -L "$PKGROOT/$path" ]; then
    target=$(readlink "$PKGROOT/$path")
    ln -s "$target" "$BASE/$path"
    case $target in
      /*) copy_from_packages "$target" ;;
      *) copy_from_packages "$(dirname "/$path")/$target" ;;
    esac
  elif [ -f "$PKGROOT/$path" ]; then
    cp "$PKGROOT/$path" "$BASE/$path"
  else
    die "no pinned package provides /$path"
  fi
}

# The ELF file's interpreter and the sonames it needs.
elf_interpreter() { readelf -l "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p'; }
elf_needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]$/\1/p'; }

# Resolves the binaries' shared libraries, transitively, in the pool's lib directories, as
# the loader will in the image (no RUNPATH, no ld.so.cache: its built-in directories).
declare -A RESOLVED=()
resolve_libraries() {
  local file=$1 interpreter soname dir found
  interpreter=$(elf_interpreter "$file")
  [ -z "$interpreter" ] || copy_from_packages "$interpreter"
  for soname in $(elf_needed "$file"); do
    [ -z "${RESOLVED[$soname]:-}" ] || continue
    found=
    for dir in "${LIB_DIRS[@]}"; do
      if [ -e "$PKGROOT/$dir/$soname" ]; then found=/$dir/$soname; break; fi
    done
    [ -n "$found" ] ||
      die "$(basename "$file") needs $soname, which no package in e2e/image/packages.txt provides (dpkg -S $soname tells which does)"
    RESOLVED[$soname]=$found
    copy_from_packages "$found"
    resolve_libraries "$PKGROOT$found"
  done
}
for binary in "${BINARIES[@]}" event-printer; do
  resolve_libraries "$TARGET/release/$binary"
done
log "runtime libraries: $(printf '%s\n' "${!RESOLVED[@]}" | LC_ALL=C sort | paste -sd' ')"

# The CA bundle ca-certificates' postinst would write (update-ca-certificates): every
# certificate of the package, in sorted order, each ending in a newline (awk 1 adds one
# where a file lacks it, as update-ca-certificates' sed does). OpenSSL's default
# file (/usr/lib/ssl/cert.pem on Debian, a symlink from the openssl package) points at it,
# so librdkafka verifies public CAs without ssl.ca.location.
certs=()
while IFS= read -r cert; do certs+=("$cert"); done < <(
  cd "$PKGROOT/usr/share/ca-certificates" && find . -type f -name '*.crt' | LC_ALL=C sort)
[ ${#certs[@]} -gt 0 ] || die "ca-certificates provided no certificate"
mkdir -p "$BASE/etc/ssl/certs" "$BASE/usr/lib/ssl"
for cert in "${certs[@]}"; do
  awk 1 "$PKGROOT/usr/share/ca-certificates/$cert"
done > "$BASE/etc/ssl/certs/ca-certificates.crt"
ln -s /etc/ssl/certs/ca-certificates.crt "$BASE/usr/lib/ssl/cert.pem"
ln -s /etc/ssl/certs "$BASE/usr/lib/ssl/certs"

# Users as distroless names them: the chart runs everything as 65532 (nonroot).
cat > "$BASE/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$BASE/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
# The kubelet mounts /etc/hosts and /etc/resolv.conf; the hosts file answers first.
cat > "$BASE/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
# The packages' copyright files: the licences (glibc's LGPL among them) travel with the
# binaries they cover. A few kilobytes; no other documentation. (libgcc-s1's is a symlink
# into gcc-12-base, which is not pinned: the GCC runtime exception asks for no notice.)
for name in "${PACKAGES[@]}"; do
  [ "$name" != "$BUSYBOX_PACKAGE" ] || continue
  if [ -f "$PKGROOT/usr/share/doc/$name/copyright" ]; then
    mkdir -p "$BASE/usr/share/doc/$name"
    cp "$PKGROOT/usr/share/doc/$name/copyright" "$BASE/usr/share/doc/$name/"
  fi
done

# ---- the binaries' layer -----------------------------------------------------------------

BINS=$WORK/bins
mkdir -p "$BINS/usr/local/bin"
for binary in "${BINARIES[@]}"; do
  cp "$TARGET/release/$binary" "$BINS/usr/local/bin/"
done

PRINTER_BINS=$WORK/printer-bins
mkdir -p "$PRINTER_BINS/usr/local/bin"
cp "$TARGET/release/event-printer" "$PRINTER_BINS/usr/local/bin/"

# ---- pause -------------------------------------------------------------------------------

PAUSE=$WORK/pause-root
mkdir -p "$PAUSE"
# Static: the image has no loader and no libc. -s strips the symbols, so nothing of this
# machine's paths ends up in it.
gcc -static -Os -s -Wall -Wextra -Werror -o "$PAUSE/pause" "$IMAGE_INPUTS/pause.c" >&2 ||
  die "gcc -static failed to build pause (is libc6-dev installed?)"

# ---- busybox (the volume helper) ---------------------------------------------------------

BUSYBOX=$WORK/busybox-root
mkdir -p "$BUSYBOX/bin" "$BUSYBOX/usr/share/doc/$BUSYBOX_PACKAGE"
cp "$PKGROOT/bin/busybox" "$BUSYBOX/bin/"
for applet in "${BUSYBOX_APPLETS[@]}"; do ln -s busybox "$BUSYBOX/bin/$applet"; done
# busybox is GPL-2: its copyright file travels with it.
cp "$PKGROOT/usr/share/doc/$BUSYBOX_PACKAGE/copyright" "$BUSYBOX/usr/share/doc/$BUSYBOX_PACKAGE/"

# ---- layers and images -------------------------------------------------------------------

sha256() { sha256sum "$1" | cut -d' ' -f1; }
file_size() { stat -c %s "$1"; }
rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

# Writes a gzipped layer of the tree ROOT, mtimes EPOCH, into the OCI layout LAYOUT; prints
# "<diff id> <digest> <size>". Ownership, modes and order are normalized so that the
# bytes depend on the files' contents only; pax headers keep no atime or ctime.
write_layer() {
  local root=$1 epoch=$2 layout=$3 tarball digest member members=()
  chmod -R u=rwX,go=rX "$root"
  while IFS= read -r member; do members+=("$member"); done < <(cd "$root" && LC_ALL=C ls -A)
  tarball=$WORK/layer.tar
  LC_ALL=C tar --create --file="$tarball" --directory="$root" \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --no-acls --no-xattrs --no-selinux -- "${members[@]}"
  gzip -n -6 < "$tarball" > "$tarball.gz"
  digest=$(sha256 "$tarball.gz")
  mkdir -p "$layout/blobs/sha256"
  mv "$tarball.gz" "$layout/blobs/sha256/$digest"
  printf '%s %s %s\n' "$(sha256 "$tarball")" "$digest" "$(file_size "$layout/blobs/sha256/$digest")"
  rm -f "$tarball"
}

# Stores the JSON document BODY as a blob of LAYOUT; prints "<digest> <size>".
write_blob() {
  local layout=$1 body=$2 file digest
  file=$WORK/blob.json
  printf '%s' "$body" > "$file"
  digest=$(sha256 "$file")
  mv "$file" "$layout/blobs/sha256/$digest"
  printf '%s %s\n' "$digest" "$(file_size "$layout/blobs/sha256/$digest")"
}

# Writes the OCI image layout LAYOUT (its layers already in it): the image config, created
# at EPOCH, with CONFIG_FIELDS (the members of its "config" object), then the manifest and
# the index. The further arguments are the layers in order, "<diff id> <digest> <size>
# <history text>" each. Prints the manifest's digest.
write_image() {
  local layout=$1 epoch=$2 config_fields=$3 created layer diff digest size created_by
  shift 3
  created=$(rfc3339 "$epoch")
  local diff_ids=() history=() layers=()
  for layer in "$@"; do
    read -r diff digest size created_by <<< "$layer"
    diff_ids+=("\"sha256:$diff\"")
    history+=("{\"created\":\"$created\",\"created_by\":\"$created_by\"}")
    layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}")
  done
  local config manifest blob
  config=$(IFS=,; printf '{"architecture":"amd64","os":"linux","created":"%s","config":{%s},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
    "$created" "$config_fields" "${diff_ids[*]}" "${history[*]}")
  blob=$(write_blob "$layout" "$config")
  read -r digest size <<< "$blob"
  manifest=$(IFS=,; printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$digest" "$size" "${layers[*]}")
  blob=$(write_blob "$layout" "$manifest")
  read -r digest size <<< "$blob"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' \
    "$digest" "$size" > "$layout/index.json"
  printf 'sha256:%s' "$digest"
}

BRIDGE_LAYOUT=$WORK/bridge.oci
base_layer=$(write_layer "$BASE" "$INPUTS_EPOCH" "$BRIDGE_LAYOUT")
bins_layer=$(write_layer "$BINS" "$SOURCE_DATE_EPOCH" "$BRIDGE_LAYOUT")
bridge_config=$(printf '"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Entrypoint":["/usr/local/bin/bridge-operator"],"WorkingDir":"/","Labels":{"org.opencontainers.image.revision":"%s","org.opencontainers.image.version":"%s"}' \
  "$COMMIT" "$VERSION")
bridge_digest=$(write_image "$BRIDGE_LAYOUT" "$SOURCE_DATE_EPOCH" "$bridge_config" \
  "$base_layer e2e/image.sh: loader, libraries and CA bundle from e2e/image/packages.txt; users" \
  "$bins_layer e2e/image.sh: ${BINARIES[*]} in /usr/local/bin")

PRINTER_LAYOUT=$WORK/event-printer.oci
printer_base_layer=$(write_layer "$BASE" "$INPUTS_EPOCH" "$PRINTER_LAYOUT")
printer_layer=$(write_layer "$PRINTER_BINS" "$SOURCE_DATE_EPOCH" "$PRINTER_LAYOUT")
printer_digest=$(write_image "$PRINTER_LAYOUT" "$SOURCE_DATE_EPOCH" \
  '"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Entrypoint":["/usr/local/bin/event-printer"],"WorkingDir":"/"' \
  "$printer_base_layer e2e/image.sh: loader, libraries and CA bundle from e2e/image/packages.txt; users" \
  "$printer_layer e2e/image.sh: event-printer in /usr/local/bin")

PAUSE_LAYOUT=$WORK/pause.oci
pause_layer=$(write_layer "$PAUSE" "$INPUTS_EPOCH" "$PAUSE_LAYOUT")
pause_digest=$(write_image "$PAUSE_LAYOUT" "$INPUTS_EPOCH" \
  '"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"' \
  "$pause_layer e2e/image.sh: /pause from e2e/image/pause.c")

BUSYBOX_LAYOUT=$WORK/busybox.oci
busybox_layer=$(write_layer "$BUSYBOX" "$INPUTS_EPOCH" "$BUSYBOX_LAYOUT")
busybox_digest=$(write_image "$BUSYBOX_LAYOUT" "$INPUTS_EPOCH" \
  '"User":"65532:65532","Env":["PATH=/bin"],"Entrypoint":["/bin/sh"],"WorkingDir":"/"' \
  "$busybox_layer e2e/image.sh: /bin/busybox from $BUSYBOX_PACKAGE=$BUSYBOX_VERSION; ${BUSYBOX_APPLETS[*]}")

read -r _ _ base_size <<< "$base_layer"
read -r _ _ bins_size <<< "$bins_layer"
log "built $BRIDGE_NAME $bridge_digest ($(( (base_size + bins_size) / 1024 )) KiB compressed) and $PAUSE_NAME $pause_digest in $((SECONDS - started))s"

# ---- push --------------------------------------------------------------------------------

# Pushes LAYOUT as REPOSITORY:TAG, then tags it with the further TAGS; checks that the
# registry holds exactly the manifest built here.
push() {
  local layout=$1 digest=$2 repository=$3 tag=$4 extra pushed
  shift 4
  crane push --insecure "$layout" "$REGISTRY/$repository:$tag" > /dev/null ||
    die "crane push to $REGISTRY/$repository:$tag failed"
  for extra in "$@"; do
    crane tag --insecure "$REGISTRY/$repository:$tag" "$extra" > /dev/null ||
      die "crane tag $REGISTRY/$repository:$tag $extra failed"
  done
  pushed=$(crane digest --insecure "$REGISTRY/$repository:$tag")
  [ "$pushed" = "$digest" ] || die "$REGISTRY/$repository:$tag is $pushed, not the $digest built here"
  log "pushed $REGISTRY/$repository:$tag${*:+ (also tagged $*)}: $digest"
}

push "$BRIDGE_LAYOUT" "$bridge_digest" "$BRIDGE_NAME" "$VERSION-$SHORT" "$VERSION"
push "$PRINTER_LAYOUT" "$printer_digest" "$PRINTER_NAME" "$VERSION-$SHORT"
push "$PAUSE_LAYOUT" "$pause_digest" "$PAUSE_NAME" "$PAUSE_TAG"
push "$BUSYBOX_LAYOUT" "$busybox_digest" "$BUSYBOX_NAME" "$BUSYBOX_TAG"

printf '%s\n' "$REGISTRY/$BRIDGE_NAME:$VERSION-$SHORT@$bridge_digest" \
  "$REGISTRY/$BUSYBOX_NAME:$BUSYBOX_TAG@$busybox_digest"
