#!/usr/bin/env bash
#! Checks the deployment files: daemonset.yaml and deploy/examples/*.yaml
#! with kubernetes-validate
#! --strict against two Kubernetes versions, and the systemd unit with
#! systemd-analyze verify against the binary just built. Installs nothing:
#! scripts/setup-test-env.sh installs kubernetes-validate into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_ROOT="${HOTMOUNT_CACHE:-/var/cache/hotmount}"
validate="$CACHE_ROOT/venv/bin/kubernetes-validate"
KUBERNETES_VERSIONS=(1.30.0 1.34.0)

fail() { echo "check-manifests: error: $*" >&2; exit 1; }
[ -x "$validate" ] || fail "$validate is missing: run scripts/setup-test-env.sh"
command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing: install package systemd (scripts/setup-test-env.sh)"

manifests=(daemonset.yaml deploy/examples/*.yaml)
for version in "${KUBERNETES_VERSIONS[@]}"; do
  for manifest in "${manifests[@]}"; do
    "$validate" --strict --quiet -k "$version" "$manifest" \
      || fail "$manifest is not valid for Kubernetes $version"
  done
done

cargo build --quiet --locked --bin hotmount
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s|/usr/local/bin/hotmount|$PWD/target/debug/hotmount|" systemd/hotmount.service \
  > "$unit_dir/hotmount.service"
# verify exits 0 on directives it ignores: any word from it is a failure.
complaints=$(systemd-analyze verify "$unit_dir/hotmount.service" 2>&1) \
  || fail "systemd/hotmount.service does not verify: $complaints"
[ -z "$complaints" ] || fail "systemd/hotmount.service: $complaints"
echo "check-manifests: ${manifests[*]} valid for Kubernetes ${KUBERNETES_VERSIONS[*]}; systemd unit verified"
