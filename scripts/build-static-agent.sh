#!/usr/bin/env bash
# build-static-agent.sh: builds hotmount as a static executable for the nfs
# tier's guest (which has no libc) and prints its path. Uses a target
# directory of its own (HOTMOUNT_STATIC_TARGET_DIR, default `static/` in the
# normal target directory) so the static flags do not thrash the normal build.
# Note: static glibc cannot load NSS modules, so the static agent resolves only
# IP literals (and /etc/hosts is not consulted): guest tests use 10.0.2.2.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${HOTMOUNT_STATIC_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/static}
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$target_dir" \
  cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu --bin hotmount
echo "$target_dir/x86_64-unknown-linux-gnu/release/hotmount"
