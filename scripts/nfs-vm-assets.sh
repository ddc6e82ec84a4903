#!/usr/bin/env bash
# nfs-vm-assets.sh: installs and caches what the nfs test tier needs.
#
# - Debian packages: qemu-system-x86, busybox-static, cpio, nfs-ganesha(-vfs),
#   kmod (depmod, to compute module dependencies of the guest kernel);
# - the current Debian kernel (the package `linux-image-amd64` depends on),
#   unpacked into ${HOTMOUNT_CACHE:-/var/cache/hotmount}/nfs-vm/:
#     vmlinuz          the kernel image
#     modules/*.ko     the NFS client and e1000 modules with every dependency,
#                      decompressed (busybox insmod cannot read .ko.xz/.ko.zst)
#     modules.order    the file names in load order (dependencies first)
#     kernel-version   the release string, e.g. 6.1.0-56-amd64
#
# Idempotent: with the cache present and the packages installed it only checks
# and returns in well under a second. Quiet unless something fails.
set -euo pipefail

CACHE="${HOTMOUNT_CACHE:-/var/cache/hotmount}/nfs-vm"
# What the guest loads, in the recipe's order; dependencies are added before
# each module that needs them.
WANTED=(sunrpc grace lockd nfs_acl auth_rpcgss netfs fscache dns_resolver nfs nfsv3 nfsv4 e1000)
PACKAGES=(qemu-system-x86 busybox-static cpio nfs-ganesha nfs-ganesha-vfs kmod xz-utils zstd)

log() { [ -n "${HOTMOUNT_VERBOSE:-}" ] && echo "nfs-vm-assets: $*" >&2 || true; }
die() { echo "nfs-vm-assets: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get install)"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/nfs-vm-apt.log 2>&1; then
    apt-get update -qq >>/tmp/nfs-vm-apt.log 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>/tmp/nfs-vm-apt.log 2>&1 \
      || die "apt-get install ${missing[*]} failed; see /tmp/nfs-vm-apt.log"
  fi
fi

# Which kernel package is current. apt-cache needs package lists; update once if
# it knows nothing.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
if [ -z "$kpkg" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
fi
if [ -z "$kpkg" ]; then
  # Offline with a cache: keep using it.
  [ -f "$CACHE/kernel-version" ] && [ -f "$CACHE/vmlinuz" ] && exit 0
  die "cannot find the kernel package (apt-cache depends linux-image-amd64 names none)"
fi
kver=${kpkg#linux-image-}

if [ -f "$CACHE/kernel-version" ] && [ "$(cat "$CACHE/kernel-version")" = "$kver" ] \
   && [ -f "$CACHE/vmlinuz" ] && [ -s "$CACHE/modules.order" ]; then
  log "cache is current ($kver)"
  exit 0
fi

log "fetching $kpkg"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get download -qq "$kpkg" >/dev/null 2>&1 ) \
  || die "apt-get download $kpkg failed (run apt-get update?)"
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/root"

moddir="$work/root/lib/modules/$kver"
[ -d "$moddir" ] || die "$kpkg has no lib/modules/$kver"
# Debian's image package ships no modules.dep (postinst runs depmod): make one.
depmod -b "$work/root" "$kver"

stage="$work/stage"
mkdir -p "$stage/modules"
declare -A done_mod=()
order=()
# path_of NAME -> module path relative to $moddir (from modules.dep)
path_of() {
  local name=$1 alt=${1//_/-}
  grep -E "(^|/)(${name}|${alt})\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | head -1 | cut -d: -f1
}
add_module() { # add_module REL_PATH: its dependencies first, then itself
  local rel=$1 dep
  [ -n "${done_mod[$rel]:-}" ] && return 0
  done_mod[$rel]=1
  for dep in $(grep -F "$rel:" "$moddir/modules.dep" | grep "^$rel:" | cut -d: -f2-); do
    add_module "$dep"
  done
  local base out
  base=$(basename "$rel")
  case "$base" in
    *.ko.xz)  out=${base%.xz};  xz -dc "$moddir/$rel" >"$stage/modules/$out" ;;
    *.ko.zst) out=${base%.zst}; zstd -qdc "$moddir/$rel" >"$stage/modules/$out" ;;
    *.ko.gz)  out=${base%.gz};  gzip -dc "$moddir/$rel" >"$stage/modules/$out" ;;
    *.ko)     out=$base;        cp "$moddir/$rel" "$stage/modules/$out" ;;
    *) die "unexpected module file $rel" ;;
  esac
  order+=("$out")
}
for m in "${WANTED[@]}"; do
  rel=$(path_of "$m")
  if [ -z "$rel" ]; then
    # Built into this kernel (modules.builtin) is fine; absent is not.
    grep -qE "/${m}\.ko" "$moddir/modules.builtin" 2>/dev/null && continue
    die "kernel $kver has no module $m"
  fi
  add_module "$rel"
done
printf '%s\n' "${order[@]}" >"$stage/modules.order"
cp "$work/root/boot/vmlinuz-$kver" "$stage/vmlinuz"
echo "$kver" >"$stage/kernel-version"

mkdir -p "$(dirname "$CACHE")"
rm -rf "$CACHE.new"
mv "$stage" "$CACHE.new"
rm -rf "$CACHE"
mv "$CACHE.new" "$CACHE"
log "cached $kver in $CACHE"
