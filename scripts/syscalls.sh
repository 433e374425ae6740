#!/usr/bin/env bash
# syscalls.sh: system calls per request, by name, for spoke, nginx and HAProxy as
# proxies under the same small keep-alive load (the setup of scripts/bench.sh: an
# nginx origin on three ports, one proxy worker pinned to PROXY_CPU, wrk and the
# origin on LOAD_CPU).
#
# For each proxy: a 1 s warm-up, then `strace -c -f` attaches to the proxy's
# processes and threads while `wrk -t1 -c10 -d5s` runs, and the counts are divided by
# the requests wrk completed. strace slows the proxy down a lot, so only the counts
# per request mean anything here, never the rates.
#
# Usage: scripts/syscalls.sh [--duration SECONDS] [--connections N]
#                            [--proxies "spoke nginx haproxy"] [--keep]
#
# Needs: strace, nginx, haproxy, wrk, python3, taskset, pgrep, cargo, and the right
# to ptrace the proxies (root, or kernel.yama.ptrace_scope = 0). On Debian or Ubuntu:
#   sudo apt-get install -y nginx haproxy wrk strace linux-perf python3
# The Markdown table goes to stdout; progress to stderr.

set -euo pipefail

me=syscalls
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

duration=5
connections=10
proxies=(spoke nginx haproxy)

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while (($# > 0)); do
    case $1 in
    --duration)
        duration=${2:?--duration needs seconds}
        shift
        ;;
    --connections)
        connections=${2:?--connections needs a number}
        shift
        ;;
    --proxies)
        read -r -a proxies <<<"${2:?--proxies needs names}"
        shift
        ;;
    --keep) keep_tmp=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[[ $duration =~ ^[1-9][0-9]*$ ]] || die "--duration: whole seconds, got $duration"
[[ $connections =~ ^[1-9][0-9]*$ ]] || die "--connections: a positive number, got $connections"
for proxy in "${proxies[@]}"; do
    [[ $proxy =~ ^(spoke|nginx|haproxy)$ ]] || die "--proxies: spoke, nginx or haproxy, got $proxy"
done

need_tools strace nginx haproxy wrk python3 taskset pgrep cargo timeout

bench_setup $((${#proxies[@]} * (duration + 40) + 600))
build_spoke
pick_ports
write_lua
start_origin

summaries=()
for proxy in "${proxies[@]}"; do
    say "$proxy: starting, warming up"
    "start_$([[ $proxy = nginx ]] && echo nginx_proxy || echo "$proxy")"
    pid=$(proxy_pid "$proxy")
    url="http://127.0.0.1:$(proxy_port "$proxy")/small"
    run_wrk report.lua "$connections" 1 "$url" >/dev/null

    # -f with -p attaches every thread of each process; nginx's master and worker
    # are both named.
    attach=()
    for p in $(tree_pids "$pid"); do
        attach+=(-p "$p")
    done
    out="$tmp/strace-$proxy.txt"
    timeout $((duration + 60)) strace -c -f -qq -o "$out" "${attach[@]}" 2>"$tmp/logs/strace-$proxy.log" &
    strace_pid=$!
    pids+=("$strace_pid")
    # strace gives no sign once it is attached; it takes well under a second.
    sleep 1
    kill -0 "$strace_pid" 2>/dev/null || {
        cat "$tmp/logs/strace-$proxy.log" >&2
        die "strace could not attach to $proxy (ptrace not allowed?)"
    }
    say "$proxy: tracing during wrk -c$connections -d${duration}s"
    result=$(run_wrk report.lua "$connections" "$duration" "$url")
    kill -INT "$strace_pid"
    wait "$strace_pid" || true
    requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$result")
    errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$result")
    ((errors == 0)) || say "warning: $errors errors against $proxy"
    say "$proxy: $requests requests traced"
    summaries+=("$proxy=$requests=$out")
    # Stop this proxy before the next one, so only one is on the proxy core.
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done

echo "### System calls per request ($(date -u +%Y-%m-%d), small GET keep-alive, wrk -c$connections, strace -c -f)"
echo
echo "Every call the proxy's processes and threads made while traced, divided by the requests"
echo "wrk completed; calls below 0.0005 per request are left out. \`clock_gettime\` served"
echo "by the vDSO is not a system call and does not appear."
echo
python3 "$helper" syscalls "${summaries[@]}"
