#!/usr/bin/env bash
#! Runs the S3 read benchmark (benches/s3_read.rs) side by side: plain ranged
#! GETs through object_store (the ceiling), a hotmount agent, s3fs and rclone
#! mount, all against one local Garage, each workload from a cold cache (fresh
#! mount, dropped page caches). Mounts happen in a private mount namespace of
#! the benchmark process; every process it starts is stopped at the end.
#!
#! Usage (as root): scripts/bench-s3.sh [OUTPUT_FILE]
#! Sizes and columns: BENCH_SEQ_MIB (1024), BENCH_SMALL_FILES (2000),
#! BENCH_LS_KEYS (10000), BENCH_RANDOM_READS (200), BENCH_PARALLEL_MIB (256 per
#! reader), BENCH_TOOLS (ceiling,hotmount,s3fs,rclone), BENCH_WORKLOADS.
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-target/bench-s3-$(date -u +%Y%m%dT%H%M%SZ).txt}"

fail() { echo "bench-s3: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (mount namespaces, FUSE, drop_caches)"
# Garage (built once into the cache), s3fs, rclone and fuse3.
scripts/setup-test-env.sh
for tool in s3fs rclone fusermount3; do
  command -v "$tool" >/dev/null || fail "$tool is missing after setup-test-env.sh"
done
# Some S3 clients refuse the environment's CA bundle for plain-HTTP endpoints.
unset AWS_CA_BUNDLE

mkdir -p "$(dirname "$out")"
echo "bench-s3: $(nproc) cores, kernel $(uname -r), $(s3fs --version 2>&1 | head -1), $(rclone version 2>/dev/null | head -1)" | tee "$out"
# The agent is built in release mode with the benchmark (CARGO_BIN_EXE_hotmount).
cargo bench --bench s3_read 2>&1 | tee -a "$out"
echo "bench-s3: results in $out"
