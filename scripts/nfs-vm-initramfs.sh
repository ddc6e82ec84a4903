#!/usr/bin/env bash
# nfs-vm-initramfs.sh BINARY|none OUT.gz [EXTRA_INIT_SNIPPET]
#
# Packs the nfs test tier's guest initramfs: busybox (static), the kernel
# modules cached by scripts/nfs-vm-assets.sh, the guest scripts in
# scripts/nfs-vm-guest/ (/init, /bin/guest-cmd, /bin/pod-view, /bin/agent-ctl), BINARY as
# /bin/hotmount (a static build: scripts/build-static-agent.sh; `none` for
# none), and EXTRA_INIT_SNIPPET as /etc/hotmount-extra.sh, which /init sources
# once the network is up. Writes OUT.gz (newc cpio, gzip).
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 BINARY|none OUT.gz [EXTRA_INIT_SNIPPET]" >&2; exit 2; }
binary=$1 out=$2 extra=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
cache="${HOTMOUNT_CACHE:-/var/cache/hotmount}/nfs-vm"
busybox=/bin/busybox
[ -x "$busybox" ] && file_is_static=$(ldd "$busybox" 2>&1 || true) || file_is_static=""
case "$file_is_static" in
  *"not a dynamic executable"*|*"statically linked"*) ;;
  *) echo "$busybox is not the static busybox: run scripts/nfs-vm-assets.sh (busybox-static)" >&2; exit 1 ;;
esac
[ -s "$cache/modules.order" ] || { echo "no kernel modules in $cache: run scripts/nfs-vm-assets.sh" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,etc,lib/hotmount-modules}
cp "$busybox" "$stage/bin/busybox"
cp "$cache"/modules/*.ko "$cache/modules.order" "$stage/lib/hotmount-modules/"
install -m 0755 "$here/nfs-vm-guest/init" "$stage/init"
install -m 0755 "$here/nfs-vm-guest/guest-cmd" "$stage/bin/guest-cmd"
install -m 0755 "$here/nfs-vm-guest/pod-view" "$stage/bin/pod-view"
install -m 0755 "$here/nfs-vm-guest/agent-ctl" "$stage/bin/agent-ctl"
if [ "$binary" != none ]; then
  ldd "$binary" 2>&1 | grep -qE 'not a dynamic executable|statically linked' \
    || { echo "$binary is not statically linked: build it with scripts/build-static-agent.sh" >&2; exit 1; }
  install -m 0755 "$binary" "$stage/bin/hotmount"
fi
[ -n "$extra" ] && install -m 0755 "$extra" "$stage/etc/hotmount-extra.sh"
# The kernel opens /dev/console for init before devtmpfs is mounted.
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
mkdir -p "$(dirname "$out")"
( cd "$stage" && find . | cpio -o -H newc --quiet ) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
