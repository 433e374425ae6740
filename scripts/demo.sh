#!/usr/bin/env bash
# demo.sh: builds spoke, starts three test backends (alpha, beta, gamma on
# 127.0.0.1:8082-8084) and the proxy with ./config.json (proxy on 8080, admin on
# 8081), prints commands to try, and stops everything it started on Ctrl-C or exit.
#
# Needs only the Rust toolchain and bash: readiness is probed with bash's /dev/tcp,
# not curl.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

proxy_port=8080
admin_port=8081
backend_ports=(8082 8083 8084)
backend_names=(alpha beta gamma)
# Generous: a first start may page in a large debug-info binary.
ready_within=15

say() { printf 'demo: %s\n' "$*"; }
die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

# True when something accepts TCP connections on 127.0.0.1:$1. The connection is
# opened and closed in a subshell; a refused loopback connect fails at once.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# PIDs of everything this script started; only these are stopped.
pids=()

stop_all() {
    trap - EXIT INT TERM
    if ((${#pids[@]} > 0)); then
        say "stopping ${#pids[@]} processes"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # spoke drains in-flight requests for up to shutdown_timeout before exiting.
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until $1 (a port) accepts connections, failing if process $2 dies first or
# the deadline passes. $3 names the process in messages.
wait_listening() {
    local port=$1 pid=$2 what=$3
    local deadline=$((SECONDS + ready_within))
    until listening "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            local status=0
            wait "$pid" || status=$?
            die "$what exited (status $status) before listening on port $port; see its output above"
        fi
        if ((SECONDS >= deadline)); then
            die "$what is not listening on port $port after ${ready_within}s"
        fi
        sleep 0.1
    done
}

[[ -f config.json ]] || die "no config.json in $(pwd); the demo needs the sample config"

for port in "$proxy_port" "$admin_port" "${backend_ports[@]}"; do
    if listening "$port"; then
        die "port $port is already in use on 127.0.0.1; stop whatever holds it (an earlier demo?) and retry"
    fi
done

say "building (cargo build --release)"
cargo build --release
bin_dir="${CARGO_TARGET_DIR:-target}/release"

for i in "${!backend_ports[@]}"; do
    "$bin_dir/spoke-backend" --port "${backend_ports[$i]}" --name "${backend_names[$i]}" &
    pids+=($!)
    wait_listening "${backend_ports[$i]}" "$!" "spoke-backend ${backend_names[$i]}"
done

say "starting spoke --config config.json"
"$bin_dir/spoke" --config config.json &
proxy_pid=$!
pids+=("$proxy_pid")
wait_listening "$proxy_port" "$proxy_pid" "spoke"
wait_listening "$admin_port" "$proxy_pid" "spoke (admin API)"

curl_note=""
command -v curl >/dev/null 2>&1 || curl_note="  (curl is not installed here: apt-get install curl)"

cat <<EOF

spoke is up: proxy on http://127.0.0.1:$proxy_port, admin API on http://127.0.0.1:$admin_port
Backends: alpha :8082, beta :8083, gamma :8084.$curl_note

Round-robin (each answer names the backend that served it):
  curl -s http://127.0.0.1:$proxy_port/
  curl -s http://127.0.0.1:$proxy_port/
  curl -s http://127.0.0.1:$proxy_port/

Pool status and metrics:
  curl -s http://127.0.0.1:$admin_port/status
  curl -s http://127.0.0.1:$admin_port/metrics

Add a fourth backend: start it in another terminal, then add it to the pool:
  $bin_dir/spoke-backend --port 8085 --name delta
  curl -s -X POST -d '{"url":"http://127.0.0.1:8085"}' http://127.0.0.1:$admin_port/backends
Remove it again:
  curl -s -X DELETE -d '{"url":"http://127.0.0.1:8085"}' http://127.0.0.1:$admin_port/backends

Load (needs wrk):
  scripts/load.sh

Press Ctrl-C to stop everything.
EOF

# Runs until Ctrl-C (the INT trap exits, the EXIT trap stops everything) or until the
# proxy exits by itself.
status=0
wait "$proxy_pid" || status=$?
die "spoke exited (status $status)"
