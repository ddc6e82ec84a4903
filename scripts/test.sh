#!/usr/bin/env bash
#! THE test command: installs what the suite needs (setup-test-env.sh), then runs
#! formatting, lints and every test tier (unit, api, mount, s3, nfs, fault).
#! Runs as root. Exits non-zero if any step fails; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'rc=$?; echo "test.sh: FAILED (exit $rc) at: $BASH_COMMAND" >&2' ERR

CACHE_ROOT="${HOTMOUNT_CACHE:-/var/cache/hotmount}"
# Mount-tier tests each start an agent, a pod namespace and sometimes Garage or a
# qemu guest; on 2 cores more than two at a time only adds timeouts.
TEST_THREADS="${HOTMOUNT_TEST_THREADS:-2}"

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

started=$(date +%s)
scripts/setup-test-env.sh
echo "test.sh: setup done ($(elapsed "$started"))"

# Test processes talk to Garage on plain-HTTP loopback: a CA bundle from the
# environment makes some S3 clients refuse to start.
unset AWS_CA_BUNDLE
export HOTMOUNT_GARAGE_BIN="${HOTMOUNT_GARAGE_BIN:-$CACHE_ROOT/garage-2.5.0/bin/garage}"
[ -x "$HOTMOUNT_GARAGE_BIN" ] || { echo "test.sh: error: garage binary $HOTMOUNT_GARAGE_BIN missing after setup" >&2; exit 1; }
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

t=$(date +%s)
cargo fmt --all --check
echo "test.sh: cargo fmt --check ok ($(elapsed "$t"))"

t=$(date +%s)
cargo clippy --all-targets --locked -- -D warnings
echo "test.sh: cargo clippy ok ($(elapsed "$t"))"

# The nfs tier's guest runs a static agent (it has no libc); built here so
# its first, slow build is a visible step of its own (the test itself then
# only checks that it is up to date).
t=$(date +%s)
scripts/build-static-agent.sh >/dev/null
echo "test.sh: static agent for the nfs tier ok ($(elapsed "$t"))"

t=$(date +%s)
scripts/check-manifests.sh
echo "test.sh: manifests ok ($(elapsed "$t"))"

t=$(date +%s)
scripts/check-observability.sh
echo "test.sh: alerts and dashboard ok ($(elapsed "$t"))"

# api/openapi.yaml against a real agent, on the unix socket and on TCP+TLS.
t=$(date +%s)
scripts/check-api-contract.sh
echo "test.sh: api contract ok ($(elapsed "$t"))"

t=$(date +%s)
scripts/build-image.sh
scripts/test-image.sh
echo "test.sh: image built and run ok ($(elapsed "$t"))"

t=$(date +%s)
cargo test --all-targets --locked -- --test-threads "$TEST_THREADS"
echo "test.sh: cargo test ok ($(elapsed "$t"))"

# Doctests are not part of --all-targets.
t=$(date +%s)
cargo test --doc --locked
echo "test.sh: doctests ok ($(elapsed "$t"))"

echo "test.sh: all passed ($(elapsed "$started"))"
