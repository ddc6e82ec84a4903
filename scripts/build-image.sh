#!/usr/bin/env bash
#! Builds the hotmount image from this repository with buildah (Debian's
#! package; root, no daemon, vfs storage) and writes it as an OCI archive to
#! target/image/hotmount.oci.tar, tagged ghcr.io/hotmount/hotmount:VERSION
#! (the image daemonset.yaml names). Nothing is downloaded but crates: the
#! image is `FROM scratch` plus the release binary and the glibc libraries it
#! links (image/Containerfile).
#!
#! Push it:  skopeo copy oci-archive:target/image/hotmount.oci.tar \
#!             docker://REGISTRY/hotmount:VERSION
#!   (or: podman load -i target/image/hotmount.oci.tar && podman push ...)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "build-image: error: $*" >&2; exit 1; }
command -v buildah >/dev/null || fail "buildah is missing: apt-get install buildah (scripts/setup-test-env.sh installs it)"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
image="ghcr.io/hotmount/hotmount:$version"
for manifest in daemonset.yaml deploy/examples/*.yaml; do
  grep -q "image: $image\$" "$manifest" || fail "$manifest does not name $image (the version this build makes)"
done
out=target/image
context="$out/context"
rootfs="$context/rootfs"

cargo build --quiet --locked --release --bin hotmount
rm -rf "$context"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/run/hotmount" "$rootfs/var/lib/hotmount"
chmod 1777 "$rootfs/tmp"
# Line tables are for backtraces on a developer's machine; the image stays small.
objcopy --strip-debug target/release/hotmount "$rootfs/usr/local/bin/hotmount"
# The libraries it links, where the dynamic loader looks for them.
for lib in $(ldd target/release/hotmount | awk '/=>/ { print $3 } /ld-linux/ { print $1 }'); do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/usr/local/bin/hotmount\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
cp image/Containerfile "$context/Containerfile"

export STORAGE_DRIVER=vfs
buildah --storage-driver vfs bud --quiet --layers=false \
  --label org.opencontainers.image.title=hotmount \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.source=https://github.com/hotmount/hotmount \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.description=Live NFS and S3 dataset mounts for running pods" \
  -t "$image" -f "$context/Containerfile" "$context" >/dev/null
rm -f "$out/hotmount.oci.tar"
buildah --storage-driver vfs push --quiet "$image" "oci-archive:$out/hotmount.oci.tar:$image"
buildah --storage-driver vfs rmi "$image" >/dev/null 2>&1 || true
size=$(du -h "$out/hotmount.oci.tar" | cut -f1)
echo "build-image: $image -> $out/hotmount.oci.tar ($size)"
