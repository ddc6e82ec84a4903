#!/usr/bin/env bash
#! Runs the image scripts/build-image.sh made, with podman (Debian's
#! package; vfs storage, runc), as the DaemonSet runs it: `hotmount
#! --version`, then `hotmount serve` in a privileged container with no
#! network, its /var/lib/hotmount a shared bind of a "node" directory
#! (Kubernetes' mountPropagation: Bidirectional), a `file://` dataset
#! attached over its socket and read from the node's side. Everything runs
#! in a private mount namespace: the host's mount table is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-image: error: $*" >&2; exit 1; }
archive=target/image/hotmount.oci.tar
[ -f "$archive" ] || fail "$archive is missing: run scripts/build-image.sh"
command -v podman >/dev/null || fail "podman is missing: apt-get install podman runc (scripts/setup-test-env.sh installs them)"
cli=$PWD/target/release/hotmount
[ -x "$cli" ] || fail "$cli is missing: run scripts/build-image.sh"

podman=(podman --storage-driver vfs --runtime runc)
# podman's default rlimits are above what some sandboxes allow: ours.
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
image=$("${podman[@]}" load -q -i "$archive" | awk '{print $NF}')
cleanup() { "${podman[@]}" rmi -f "$image" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# The README's push command reads the archive with skopeo: it must, and the
# OCI labels must say what was built.
command -v skopeo >/dev/null || fail "skopeo is missing: apt-get install skopeo (scripts/setup-test-env.sh installs it)"
copied=$(mktemp -d)
skopeo copy -q "oci-archive:$archive" "dir:$copied" || fail "skopeo cannot read $archive"
rm -rf "$copied"
labels=$(skopeo inspect "oci-archive:$archive")
for label in org.opencontainers.image.version org.opencontainers.image.revision \
  org.opencontainers.image.source org.opencontainers.image.licenses; do
  grep -q "\"$label\"" <<<"$labels" || fail "the image has no $label label"
done

version=$("${podman[@]}" run --rm --network none "${limits[@]}" "$image" --version)
[ "$version" = "hotmount $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)" ] \
  || fail "--version in the image said: $version"

export PODMAN_CMD="${podman[*]}" LIMITS="${limits[*]}" IMAGE="$image" CLI="$cli"
unshare -m --propagation private bash -euo pipefail -c '
  fail() { echo "test-image: error: $*" >&2; exit 1; }
  node=$(mktemp -d)
  mount -t tmpfs node "$node"
  mount --make-rshared "$node"
  mkdir -p "$node/lib" "$node/run" "$node/buckets/demo"
  echo "from the image" >"$node/buckets/demo/hello.txt"
  stop() { $PODMAN_CMD rm -f -t 5 agent >/dev/null 2>&1 || true; }
  trap stop EXIT
  $PODMAN_CMD run -d --name agent --network none --privileged --device /dev/fuse $LIMITS \
    --mount type=bind,src="$node/lib",dst=/var/lib/hotmount,bind-propagation=rshared \
    --mount type=bind,src="$node/run",dst=/run/hotmount \
    --mount type=bind,src="$node/buckets",dst=/buckets,ro=true \
    "$IMAGE" serve --allow-file-endpoint /buckets >/dev/null
  for _ in $(seq 1 100); do
    "$CLI" ready --socket "$node/run/api.sock" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$CLI" ready --socket "$node/run/api.sock" || { $PODMAN_CMD logs agent >&2; fail "the agent in the container never got ready"; }
  "$CLI" attach demo --s3 s3://demo --endpoint file:///buckets --wait --socket "$node/run/api.sock"
  seen=$(cat "$node/lib/mnt/demo/hello.txt") || { $PODMAN_CMD logs agent >&2; fail "the node does not see the dataset"; }
  [ "$seen" = "from the image" ] || fail "the node read: $seen"
  mounts=$(awk -v p="$node/lib/mnt/demo" "\$5 == p" /proc/self/mountinfo | wc -l)
  [ "$mounts" -eq 1 ] || fail "$mounts mounts at the dataset path on the node"
  # The supervisor and its worker both run in the container.
  workers=$($PODMAN_CMD top agent comm | grep -c hotmount-worker || true)
  [ "$workers" -ge 1 ] || fail "no worker process in the container"
  "$CLI" detach demo --socket "$node/run/api.sock"
  echo "test-image: the agent in the image served a dataset the node reads ($(awk -v p="$node/lib/mnt/demo" "\$5 == p" /proc/self/mountinfo | wc -l) mounts left after detach)"
'
echo "test-image: $version; $(du -h "$archive" | cut -f1) archive"
