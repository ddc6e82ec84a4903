#!/usr/bin/env bash
#! Installs everything the full hotmount test suite needs on a Debian 12 machine
#! (run as root): Debian packages for the mount, s3, nfs and fault tiers, and a
#! Garage S3 server built once into a cache directory. Idempotent and quiet:
#! one line per step with its duration; non-zero exit with a message on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_ROOT="${HOTMOUNT_CACHE:-/var/cache/hotmount}"
GARAGE_VERSION="2.5.0"
GARAGE_ROOT="$CACHE_ROOT/garage-$GARAGE_VERSION"
GARAGE_BIN="$GARAGE_ROOT/bin/garage"
APT_LISTS_MAX_AGE_MINUTES=360
# A garage build started by someone else (e.g. the machine's provisioning) logs here.
FOREIGN_GARAGE_BUILD_LOG=/tmp/garage-build.log
FOREIGN_GARAGE_BUILD_WAIT_SECONDS=1800
# kubernetes-validate (PyPI) checks the manifests; it carries its schemas.
KUBERNETES_VALIDATE_VERSION="1.37.0"
# Schemathesis (PyPI) runs api/openapi.yaml against a real agent (check-api-contract.sh).
SCHEMATHESIS_VERSION="4.32.5"
VENV="$CACHE_ROOT/venv"

APT_PACKAGES=(
  fuse3            # fusermount3, /dev/fuse userspace side (s3 tier)
  prometheus       # promtool check metrics / check rules / test rules
  python3-yaml     # check-observability.sh reads the rule files
  buildah podman runc binutils skopeo            # the image: build-image.sh, test-image.sh
  curl openssl     # TLS listener test: a client and a certificate
  util-linux       # unshare, nsenter (mount tier)
  socat iproute2   # check-api-contract.sh: the unix socket bridged to TCP; lo in a netns
  s3fs rclone      # reference S3 clients used in comparisons
  libjemalloc2 libmimalloc2.0   # the benchmark's allocator columns (LD_PRELOAD)
  rsync            # conformance: rsync -a into a read-write dataset
  systemd          # systemd-analyze verify of the unit (check-manifests.sh); systemd as
                   # PID 1 of a test machine running the unit (tests/systemd_unit.rs)
  qemu-system-x86 busybox-static cpio xz-utils   # nfs tier: kernel under qemu
  nfs-ganesha nfs-ganesha-vfs                    # nfs tier: user-space NFS server
)

fail() { echo "setup-test-env: error: $*" >&2; exit 1; }

# step NAME COMMAND...: runs a step quietly, prints "NAME: ok (Ns)" or its log on failure.
step() {
  local name="$1"; shift
  local log started rc
  log="$(mktemp -t hotmount-setup.XXXXXX)"
  started=$(date +%s)
  set +e
  ( set -e; "$@" ) >"$log" 2>&1
  rc=$?
  set -e
  local took=$(( $(date +%s) - started ))
  if [ "$rc" -ne 0 ]; then
    echo "setup-test-env: $name: FAILED after ${took}s (exit $rc); output:" >&2
    tail -n 40 "$log" >&2
    rm -f "$log"
    fail "$name failed"
  fi
  printf 'setup-test-env: %-28s %s (%ss)\n' "$name:" "$(tail -n 1 "$log" | cut -c1-80)" "$took"
  rm -f "$log"
}

[ "$(id -u)" -eq 0 ] || fail "must run as root (installs packages, tests mount filesystems)"
command -v cargo >/dev/null || fail "cargo not found: the Rust toolchain must be installed"

missing_apt_packages() {
  local pkg status
  for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "installed" ] || echo "$pkg"
  done
}

install_apt_packages() {
  local missing
  missing=$(missing_apt_packages | tr '\n' ' ')
  if [ -z "$missing" ]; then
    echo "already installed"
    return 0
  fi
  # Refresh package lists once, only if they are older than the limit (or absent).
  # apt does not always touch unchanged lists, so our own stamp records the last update.
  local stamp="$CACHE_ROOT/apt-update.stamp"
  mkdir -p "$CACHE_ROOT"
  if [ -z "$(find "$stamp" /var/lib/apt/lists -maxdepth 1 \( -name apt-update.stamp -o -name '*_Packages*' \) \
             -mmin -"$APT_LISTS_MAX_AGE_MINUTES" -print -quit 2>/dev/null)" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    touch "$stamp"
  fi
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
  echo "installed: $missing"
}

check_tools() {
  local tool
  for tool in promtool unshare nsenter fusermount3 qemu-system-x86_64 ganesha.nfsd cpio xz; do
    command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; return 1; }
  done
  [ -e /dev/fuse ] || { echo "/dev/fuse is missing: the s3 tier needs FUSE" >&2; return 1; }
  echo "promtool unshare nsenter fusermount3 qemu ganesha /dev/fuse present"
}

foreign_garage_build_running() {
  [ -e "$FOREIGN_GARAGE_BUILD_LOG" ] && pgrep -f 'cargo install garage' >/dev/null 2>&1
}

install_garage() {
  if [ -x "$GARAGE_BIN" ]; then
    echo "cached at $GARAGE_BIN"
    return 0
  fi
  mkdir -p "$CACHE_ROOT"
  # Serialise our own concurrent runs on the cache; a foreign build is waited for below.
  exec 9>"$CACHE_ROOT/.garage-$GARAGE_VERSION.lock"
  flock -w "$FOREIGN_GARAGE_BUILD_WAIT_SECONDS" 9 || { echo "timed out waiting for the garage lock" >&2; return 1; }
  local waited=0
  # Wait for the process itself: the binary may appear before cargo has finished.
  while foreign_garage_build_running; do
    [ "$waited" -ge "$FOREIGN_GARAGE_BUILD_WAIT_SECONDS" ] && { echo "timed out waiting for the running 'cargo install garage' (see $FOREIGN_GARAGE_BUILD_LOG)" >&2; return 1; }
    sleep 5; waited=$((waited + 5))
  done
  if [ -x "$GARAGE_BIN" ]; then
    echo "built by a concurrent build (waited ${waited}s): $GARAGE_BIN"
    return 0
  fi
  # Built in a private target dir so it never disturbs the project's build cache.
  CARGO_TARGET_DIR="$CACHE_ROOT/garage-build-target" \
    cargo install garage --locked --version "$GARAGE_VERSION" --root "$GARAGE_ROOT" --quiet
  rm -rf "$CACHE_ROOT/garage-build-target"
  [ -x "$GARAGE_BIN" ] || { echo "cargo install finished but $GARAGE_BIN is missing" >&2; return 1; }
  echo "built $GARAGE_BIN"
}

install_kubernetes_validate() {
  if [ -x "$VENV/bin/kubernetes-validate" ] \
    && "$VENV/bin/kubernetes-validate" --version 2>&1 | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
    echo "cached in $VENV"
    return 0
  fi
  mkdir -p "$CACHE_ROOT"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  echo "installed kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $VENV"
}

install_schemathesis() {
  if [ -x "$VENV/bin/schemathesis" ] \
    && "$VENV/bin/schemathesis" --version 2>&1 | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "cached in $VENV"
    return 0
  fi
  mkdir -p "$CACHE_ROOT"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  "$VENV/bin/schemathesis" --version 2>&1 | grep -q "$SCHEMATHESIS_VERSION" \
    || { echo "schemathesis $SCHEMATHESIS_VERSION does not run after pip install" >&2; return 1; }
  echo "installed schemathesis $SCHEMATHESIS_VERSION in $VENV"
}

check_garage() {
  "$GARAGE_BIN" --version 2>&1 | head -n 1 | grep -q "$GARAGE_VERSION" \
    || { echo "$GARAGE_BIN does not report version $GARAGE_VERSION" >&2; return 1; }
  echo "$("$GARAGE_BIN" --version 2>&1 | head -n 1 | cut -d' ' -f1-2)"
}

step "apt packages" install_apt_packages
step "tools present" check_tools
if [ ! -x "$GARAGE_BIN" ]; then
  echo "setup-test-env: garage $GARAGE_VERSION not cached in $GARAGE_ROOT: building it (about 10 min on 2 cores)"
fi
step "garage $GARAGE_VERSION" install_garage
step "garage runs" check_garage
# The nfs tier's guest kernel and modules (Debian's current kernel package).
step "kubernetes-validate" install_kubernetes_validate
step "schemathesis" install_schemathesis
step "nfs guest kernel" bash -c 'scripts/nfs-vm-assets.sh && echo "cached: $(cat "${HOTMOUNT_CACHE:-/var/cache/hotmount}/nfs-vm/kernel-version")"'
