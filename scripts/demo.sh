#!/usr/bin/env bash
# Runs the hotmount agent on its embedded default: a local directory served as
# an S3 bucket (file:// endpoint). Everything happens in a private mount
# namespace that simulates a node, so the host's mount table is never touched.
#
#   scripts/demo.sh          serve until Ctrl-C (try the printed commands)
#   scripts/demo.sh --once   attach, show, detach, stop (non-interactive)
#
# Needs root and /dev/fuse (as the agent does in production).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
[[ "${1:-}" == "--once" ]] && once=true
[[ $(id -u) == 0 ]] || { echo "demo: needs root (the agent mounts filesystems)" >&2; exit 1; }
[[ -c /dev/fuse ]] || { echo "demo: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }

cargo build --quiet --bin hotmount
bin="$PWD/target/debug/hotmount"
work="${HOTMOUNT_DEMO_DIR:-/tmp/hotmount-demo}"
socket="$work.sock"
mkdir -p "$work" "$work-buckets/demo/images"
for i in 1 2 3; do printf 'picture %s\n' "$i" > "$work-buckets/demo/images/img-$i.txt"; done
printf 'hello from a file:// bucket\n' > "$work-buckets/demo/README.txt"

export bin work socket once
exec unshare --mount --propagation private bash -euo pipefail -c '
  # The "node": a shared scratch tree, like the host side of /var/lib/hotmount.
  mount -t tmpfs hotmount-demo "$work"
  mount --make-rshared "$work"
  "$bin" serve --root "$work/mnt" --state-dir "$work/state" --socket "$socket" \
      --allow-file-endpoint "$work-buckets" --probe-interval 5s 2> "$work.log" &
  agent=$!
  trap "kill $agent 2>/dev/null; wait $agent 2>/dev/null; rm -f $socket" EXIT
  for _ in $(seq 100); do "$bin" ready --socket "$socket" 2>/dev/null && break; sleep 0.1; done
  "$bin" ready --socket "$socket" || { cat "$work.log"; exit 1; }

  # A running "pod": its own mount namespace with a read-only rslave view.
  mkdir -p "$work/pod"
  unshare --mount --propagation unchanged sh -c "
      mount --rbind \"$work/mnt\" \"$work/pod\" && mount -o remount,bind,ro \"$work/pod\" &&
      mount --make-rslave \"$work/pod\" && exec sleep infinity" &
  pod=$!
  trap "kill $pod $agent 2>/dev/null; wait $agent 2>/dev/null; rm -f $socket" EXIT
  sleep 0.3

  echo "== attach the demo bucket while the pod runs"
  "$bin" attach demo --s3 s3://demo --endpoint "file://$work-buckets" --socket "$socket"
  "$bin" ls --socket "$socket"
  echo "== the pod sees it (no restart):"
  nsenter -t "$pod" -m ls -l "$work/pod/demo" "$work/pod/demo/images"
  nsenter -t "$pod" -m cat "$work/pod/demo/README.txt"
  if [[ "$once" == true ]]; then
    "$bin" detach demo --socket "$socket"
    echo "== after detach the pod sees:"; nsenter -t "$pod" -m ls -A "$work/pod"
    exit 0
  fi
  echo
  echo "The agent is serving on $socket (Ctrl-C stops it). From another shell:"
  echo "  $bin ls --socket $socket"
  echo "  $bin attach more --s3 s3://demo/images --endpoint file://$work-buckets --socket $socket"
  echo "  nsenter -t $pod -m ls $work/pod          # what the pod sees"
  echo "  $bin detach demo --socket $socket"
  wait $agent
'
