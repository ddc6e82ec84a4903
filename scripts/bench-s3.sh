#!/usr/bin/env bash
#! Runs the S3 read benchmark (benches/s3_read.rs) side by side: plain ranged
#! GETs through object_store (the ceiling), a hotmount agent, s3fs and rclone
#! mount, all against one local Garage, each workload from a cold cache (fresh
#! mount, dropped page caches). Then the cache columns (hotmount --cache-dir,
#! s3fs -o use_cache, rclone --vfs-cache-mode full) read the small files and
#! the 1 GiB file twice in one mount: epoch 1 cold, epoch 2 after dropping the
#! page caches (the tool's own disk cache warm). Mounts happen in a private
#! mount namespace of the benchmark process; every process it starts is
#! stopped at the end.
#!
#! Usage (as root): scripts/bench-s3.sh [OUTPUT_FILE]
#! Sizes and columns: BENCH_SEQ_MIB (1024), BENCH_SMALL_FILES (2000),
#! BENCH_LS_KEYS (10000), BENCH_RANDOM_READS (200), BENCH_PARALLEL_MIB (256 per
#! reader), BENCH_TOOLS (ceiling,hotmount,s3fs,rclone,hotmount+cache,
#! s3fs+cache,rclone+cache; also hotmount+jemalloc and hotmount+mimalloc, the
#! agent with that allocator preloaded), BENCH_WORKLOADS (seq,small,ls,random,parallel,
#! write; the cache columns run seq and small), BENCH_CACHE_ROOT (where the
#! cache columns' fresh cache directories go: /var/tmp, must be a disk, not a
#! tmpfs), BENCH_AGENT_ARGS (extra `hotmount serve` flags), BENCH_AGENT_ENV
#! (NAME=VALUE pairs for the agent's environment), BENCH_AGENT_BIN (another
#! agent binary, e.g. a build of another commit for an A/B).
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
changes=$(git diff --shortstat -- src 2>/dev/null | sed 's/^ //' || true)
echo "bench-s3: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), uncommitted changes in src/: ${changes:-none}" | tee -a "$out"
# The agent is built in release mode with the benchmark (CARGO_BIN_EXE_hotmount),
# before the clock starts.
cargo bench --bench s3_read --no-run >&2
echo "bench-s3: start $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
started=$(date +%s)
cargo bench --bench s3_read 2>&1 | tee -a "$out"
echo "bench-s3: end $(date -u +%FT%TZ), $(( $(date +%s) - started )) s, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
echo "bench-s3: results in $out"
