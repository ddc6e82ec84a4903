#!/usr/bin/env bash
#! Checks the API contract (api/openapi.yaml) against a real agent: starts
#! `hotmount serve` and runs Schemathesis (generated valid and invalid
#! requests: examples, coverage, fuzzing, stateful PUT -> GET -> DELETE
#! chains) on both of its listeners: the unix socket, as uid 0, and TCP with
#! TLS and a bearer token. Every answer must be documented (status, body
#! schema, content type, headers); no 5xx but the documented backend
#! failures (502 and 504: the generated endpoints are refused or
#! unreachable); invalid input rejected with 400/401/404/405/413. At the end
#! the agent must still be the same process, no worker replaced, and it must
#! stop cleanly (SIGTERM: exit 0, no dataset left mounted). Prints how
#! many requests were sent on each listener and what the agent answered.
#!
#! Where it runs: in its own mount, network and pid namespaces (`unshare
#! --mount --propagation private --net --pid`): the host's mount table is
#! never touched; the agent reaches no network (generated endpoints and AWS
#! lookups fail at once, nothing leaves the machine); and when the run ends,
#! nothing it started can outlive it (the kernel kills what is left in the
#! pid namespace; the trap stops the agent cleanly first).
#!
#! The unix socket: Schemathesis speaks HTTP over TCP only, so a `socat`
#! bridge (run as root, so the agent sees uid 0 by SO_PEERCRED) relays a
#! loopback port to the socket byte for byte. A bridge rather than the
#! Python API with a unix-socket requests session: both listeners are then
#! tested by the same `schemathesis run` with the same checks and the same
#! report, and the agent still serves the socket through its own listener
#! (peer credentials, connection limits) exactly as for any local client.
#!
#! Usage: scripts/check-api-contract.sh
#!   HOTMOUNT_CONTRACT_EXAMPLES  fuzzing cases per operation and listener (default 400)
#!   HOTMOUNT_CONTRACT_SEED      Schemathesis seed (default: a new one, printed)
#!   HOTMOUNT_CONTRACT_DOCUMENT  another document to check (default api/openapi.yaml)
#!   HOTMOUNT_CACHE              where setup-test-env.sh put the venv (/var/cache/hotmount)
#! Needs root, /dev/fuse, unshare, ip, socat, openssl, curl and Schemathesis
#! in $HOTMOUNT_CACHE/venv (scripts/setup-test-env.sh installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${HOTMOUNT_CACHE:-/var/cache/hotmount}"
SCHEMATHESIS="$CACHE_ROOT/venv/bin/schemathesis"
SCHEMATHESIS_VERSION="4.32.5"
DOCUMENT="${HOTMOUNT_CONTRACT_DOCUMENT:-$ROOT/api/openapi.yaml}"
EXAMPLES="${HOTMOUNT_CONTRACT_EXAMPLES:-400}"
# The fewest requests the two runs together must have sent.
MIN_REQUESTS=2000
# The file:// buckets the document's examples name (file:///srv/datasets);
# a tmpfs over /srv inside the private mount namespace.
DATASETS=/srv/datasets
TLS_PORT=7443
BRIDGE_PORT=7080

fail() { echo "check-api-contract: error: $*" >&2; exit 1; }

if [ "${HOTMOUNT_CONTRACT_INSIDE:-}" != 1 ]; then
  [ "$(id -u)" -eq 0 ] || fail "must run as root (the agent mounts filesystems)"
  [ -c /dev/fuse ] || fail "/dev/fuse is missing: the agent's S3 datasets need FUSE (modprobe fuse)"
  for tool in unshare ip socat openssl curl cargo; do
    command -v "$tool" >/dev/null \
      || fail "$tool is missing (scripts/setup-test-env.sh installs util-linux, iproute2, socat, openssl, curl)"
  done
  [ -x "$SCHEMATHESIS" ] || fail "$SCHEMATHESIS is missing: run scripts/setup-test-env.sh"
  "$SCHEMATHESIS" --version | grep -qF "$SCHEMATHESIS_VERSION" \
    || fail "$SCHEMATHESIS is not version $SCHEMATHESIS_VERSION: run scripts/setup-test-env.sh"
  [ -d /srv ] || fail "/srv is missing (the document's file:// examples live there; a tmpfs covers it in the namespace)"
  [ -f "$DOCUMENT" ] || fail "$DOCUMENT is missing"

  (cd "$ROOT" && cargo build --quiet --locked --bin hotmount) || fail "cargo build failed"
  work=$(mktemp -d -t hotmount-contract.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  # --kill-child: if unshare itself is killed, so is everything inside.
  HOTMOUNT_CONTRACT_INSIDE=1 HOTMOUNT_CONTRACT_WORK="$work" \
    HOTMOUNT_CONTRACT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/hotmount" \
    unshare --mount --propagation private --net --pid --fork --mount-proc --kill-child \
    "${BASH_SOURCE[0]}" || fail "the contract check failed (above)"
  exit 0
fi

# ---- inside the namespaces: pid 1 of the new pid namespace ----
work="$HOTMOUNT_CONTRACT_WORK"
bin="$HOTMOUNT_CONTRACT_BIN"
[ -x "$bin" ] || fail "$bin is missing"
node="$work/node"
agent_pid=""
bridge_pid=""

# Stops the agent with SIGTERM, as a node does: it must exit 0 within 30s
# and leave no dataset mounted (--unmount-fuse-on-stop). Says what failed.
stop_agent() {
  local pid="$agent_pid" status waited=0
  agent_pid=""
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 300 ]; do
    sleep 0.1; waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "check-api-contract: error: the agent did not stop within 30s of SIGTERM; killed" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" 2>/dev/null && status=0 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "check-api-contract: error: the agent exited with status $status at SIGTERM" >&2
    return 1
  fi
  if findmnt -rn -o TARGET | grep -q "^$node/mnt/"; then
    echo "check-api-contract: error: datasets still mounted after the agent stopped:" >&2
    findmnt -rn -o TARGET | grep "^$node/mnt/" >&2
    return 1
  fi
}

stop_bridge() {
  if [ -n "$bridge_pid" ]; then
    kill "$bridge_pid" 2>/dev/null || true
    wait "$bridge_pid" 2>/dev/null || true
    bridge_pid=""
  fi
  return 0
}

# On any exit: nothing left running (the pid namespace would kill what is
# left anyway), and the agent's log when something failed.
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_bridge
  [ -n "$agent_pid" ] && stop_agent
  if [ "$rc" -ne 0 ] && [ -f "$work/agent.log" ]; then
    echo "---- agent log (last 60 lines) ----" >&2
    tail -n 60 "$work/agent.log" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

ip link set lo up

# The node: a shared tree, as /var/lib/hotmount is on a real node.
mkdir -p "$node"
mount -t tmpfs -o mode=0755 hotmount-contract "$node"
mount --make-rshared "$node"
install -d -m 0700 "$node/creds"

# Buckets the examples mount: demo (with a few files), and an empty one.
mount -t tmpfs -o mode=0755 hotmount-contract-srv /srv
mkdir -p "$DATASETS/demo/images" "$DATASETS/empty"
printf 'hello\n' > "$DATASETS/demo/README.txt"
for i in 1 2 3; do printf 'picture %s\n' "$i" > "$DATASETS/demo/images/$i.txt"; done

# TLS and a token for the TCP listener.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=hotmount-contract -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null || fail "openssl could not make a certificate"
token=$(openssl rand -hex 24)
(umask 077 && printf 'contract admin %s\n' "$token" > "$work/tokens")

# Egress: only 127.0.0.1:9 (nothing listens there): a generated endpoint is
# refused (403 EndpointNotAllowed) or, for that one, unreachable (502), and
# a short mount deadline bounds whatever hangs (504).
"$bin" serve \
  --root "$node/mnt" --state-dir "$node/state" --socket "$node/api.sock" \
  --credentials-dir "$node/creds" \
  --listen "127.0.0.1:$TLS_PORT" --token-file "$work/tokens" \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
  --allow-file-endpoint "$DATASETS" --egress-allow 127.0.0.1:9 \
  --mount-timeout 2s --probe-interval 1s --probe-timeout 1s --s3-request-timeout 2s \
  --unmount-fuse-on-stop >"$work/agent.log" 2>&1 &
agent_pid=$!

api() { curl -sS --max-time 10 --unix-socket "$node/api.sock" "$@"; }
ready=false
for _ in $(seq 300); do
  kill -0 "$agent_pid" 2>/dev/null || fail "the agent exited before it was ready"
  if [ "$(api -o /dev/null -w '%{http_code}' http://localhost/readyz 2>/dev/null)" = 200 ]; then
    ready=true; break
  fi
  sleep 0.1
done
$ready || fail "the agent was not ready within 30s"
worker_before=$(api http://localhost/metrics | awk '/^hotmount_worker_restarts_total/ {s += $2} END {print s + 0}')

socat "TCP-LISTEN:$BRIDGE_PORT,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$node/api.sock" 2>"$work/socat.log" &
bridge_pid=$!
bridged=false
for _ in $(seq 50); do
  if curl -s -o /dev/null "http://127.0.0.1:$BRIDGE_PORT/healthz"; then
    bridged=true; break
  fi
  sleep 0.1
done
$bridged || fail "the socat bridge to the socket did not answer within 5s: $(cat "$work/socat.log")"

# What the agent answered so far, all routes: "CODE COUNT" lines.
answered() {
  api http://localhost/metrics | awk '
    /^hotmount_http_requests_total\{/ {
      match($0, /code="[0-9]+"/); code = substr($0, RSTART + 6, 3); n[code] += $NF
    }
    END { for (c in n) printf "%s %d\n", c, n[c] }' | sort
}
# The difference of two answered() outputs, "CODE:COUNT ... (TOTAL in all)",
# without the 200 of the first output's own read of /metrics.
delta() {
  awk 'NR == FNR { before[$1] = $2; next }
       { d = $2 - before[$1] - ($1 == "200"); if (d > 0) { printf "%s:%d ", $1, d; t += d } }
       END { printf "(%d in all)\n", t }' "$1" "$2"
}

cat > "$work/schemathesis.toml" <<'TOML'
# 502 and 504 are the documented answers of a backend that refuses or does
# not answer (every generated endpoint here); any other 5xx is a bug.
[checks.not_a_server_error]
expected-statuses = ["2XX", "3XX", "4XX", "502", "504"]
# Invalid input is refused before anything is tried.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "413"]
TOML

# Hooks: every request counted (what was sent, 401s included, which the
# agent's metrics do not count), and waits kept short. A GET with `wait`
# blocks until the state or `timeout` (30s when absent; up to 600s): a
# timeout that may parse as a duration (it starts with a digit) or none at
# all is sent as 1s. The document's `timeout` is any string, so this keeps
# a valid case valid; timeouts that cannot parse still go out as generated.
cat > "$work/hooks.py" <<'PY'
"""check-api-contract.sh's Schemathesis hooks: count requests, bound waits."""
import atexit
import os
import threading

import schemathesis

_sent = 0
_lock = threading.Lock()


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.method.upper() != "GET" or case.operation.path != "/v1/mounts/{name}":
        return
    query = case.query or {}
    if "wait" not in query:
        return
    timeout = query.get("timeout")
    if timeout is None or (not isinstance(timeout, list) and str(timeout).lstrip()[:1].isdigit()):
        case.query = {**query, "timeout": "1s"}


@schemathesis.hook
def after_call(context, case, response):
    global _sent
    with _lock:
        _sent += 1


@atexit.register
def _write_count():
    with open(os.environ["HOTMOUNT_CONTRACT_COUNT"], "w") as out:
        out.write(f"{_sent}\n")
PY

# run_schemathesis LABEL URL [OPTION...]: one run; the requests it sent go
# to $work/sent.LABEL.
run_schemathesis() {
  local label="$1" url="$2"; shift 2
  local log="$work/schemathesis.$label.log" started
  answered > "$work/answered.$label.before"
  started=$(date +%s)
  echo "check-api-contract: schemathesis on the $label listener ($url)"
  # From the work directory: nothing (cache, reports) lands in the tree. One
  # worker: Python 3.11 before 3.11.8 may fail parsing in two threads at once
  # ("AST constructor recursion depth mismatch", CPython gh-106905).
  if ! (cd "$work" && HOTMOUNT_CONTRACT_COUNT="$work/sent.$label" SCHEMATHESIS_HOOKS="$work/hooks.py" \
        "$SCHEMATHESIS" --config-file "$work/schemathesis.toml" --no-color run "$DOCUMENT" \
        --url "$url" --checks all "$@" \
        --max-examples "$EXAMPLES" --workers 1 --request-timeout 20 \
        --generation-database none ${HOTMOUNT_CONTRACT_SEED:+--seed "$HOTMOUNT_CONTRACT_SEED"} \
        >"$log" 2>&1); then
    cat "$log" >&2
    fail "schemathesis found answers on the $label listener that break the contract (above)"
  fi
  kill -0 "$agent_pid" 2>/dev/null || fail "the agent died during the $label run"
  answered > "$work/answered.$label.after"
  sed -n '/^Test cases:/,/^Seed:/p' "$log" | grep -v '^$' | sed 's/^/    /'
  echo "check-api-contract: $label: $(cat "$work/sent.$label") requests sent in $(( $(date +%s) - started ))s;" \
    "the router answered $(delta "$work/answered.$label.before" "$work/answered.$label.after")"
}

# Not checked: positive_data_acceptance (a valid spec still fails here, with
# 403, 409, 502 or 504: no backend is reachable). The socket takes no token
# (its callers are known by uid; the document's bearer scheme is TCP's), so
# there no Authorization header is generated, and the checks that a call
# without one is refused (ignored_auth, missing_required_header) are off.
run_schemathesis socket "http://127.0.0.1:$BRIDGE_PORT" \
  --generation-with-security-parameters false \
  --exclude-checks positive_data_acceptance,ignored_auth,missing_required_header
run_schemathesis tcp "https://127.0.0.1:$TLS_PORT" \
  --exclude-checks positive_data_acceptance \
  --tls-verify "$work/cert.pem" --header "Authorization: Bearer $token"

socket_requests=$(cat "$work/sent.socket")
tcp_requests=$(cat "$work/sent.tcp")
total=$((socket_requests + tcp_requests))
[ "$total" -ge "$MIN_REQUESTS" ] || fail "only $total requests sent (at least $MIN_REQUESTS wanted): raise HOTMOUNT_CONTRACT_EXAMPLES"
worker_after=$(api http://localhost/metrics | awk '/^hotmount_worker_restarts_total/ {s += $2} END {print s + 0}')
[ "$worker_after" = "$worker_before" ] || fail "the agent's worker was replaced during the run ($worker_before -> $worker_after restarts): it crashed or hung"
if grep -q 'panicked at' "$work/agent.log"; then
  grep -B2 -A10 'panicked at' "$work/agent.log" >&2
  fail "the agent panicked during the run"
fi
stop_bridge
stop_agent || fail "the agent did not stop cleanly"
echo "check-api-contract: ok: $socket_requests requests on the unix socket, $tcp_requests on TCP+TLS, every answer documented; the agent stopped cleanly"
