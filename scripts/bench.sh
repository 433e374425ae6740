#!/usr/bin/env bash
# bench.sh: spoke against nginx and HAProxy as reverse proxies, one worker each.
#
# nginx serves as the origin on three ports; each proxy balances over them. The
# proxy under test is pinned to one core (PROXY_CPU, default 0); wrk, the origin and
# the helpers share the other (LOAD_CPU, default 1). On 2 cores the load side
# saturates first, so requests/s alone cannot rank the proxies: the column that
# does is requests per second of *proxy* CPU (requests / the proxy's utime+stime).
#
# Scenarios, in rounds that interleave the proxies (spoke, nginx, haproxy, spoke, ...):
#   small GET keep-alive (c=50), small GET with Connection: close (c=50),
#   1 MiB GET (c=10), 64 KiB POST (c=10), small GET latency (c=10),
#   a 1 GiB download (peak RSS), 5,000 idle keep-alive clients (RSS per connection).
#
# Usage: scripts/bench.sh [--quick] [--rounds N] [--duration SECONDS]
#                         [--idle N] [--keep] [--out FILE]
#   --quick      one round of 3 s runs (about 1.5 minutes)
#   default      3 rounds of 8 s runs (about 9 minutes)
#   --idle N     idle clients (default 5000; lowered to fit `ulimit -n`)
#   --keep       keep the temp dir (configs, logs, raw results)
#   --out FILE   also write the Markdown report to FILE
#
# Needs: nginx, haproxy, wrk, python3, taskset, pgrep, cargo. On Debian or Ubuntu:
#   sudo apt-get install -y nginx haproxy wrk strace linux-perf python3
# The Markdown report goes to stdout (paste it into the README); progress to stderr.

set -euo pipefail

me=bench
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

rounds=3
duration=8
idle_clients=5000
out_file=""
mode=full

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while (($# > 0)); do
    case $1 in
    --quick)
        rounds=1
        duration=3
        mode=quick
        ;;
    --rounds)
        rounds=${2:?--rounds needs a number}
        shift
        ;;
    --duration)
        duration=${2:?--duration needs seconds}
        shift
        ;;
    --idle)
        idle_clients=${2:?--idle needs a number}
        shift
        ;;
    --keep) keep_tmp=1 ;;
    --out)
        out_file=${2:?--out needs a file}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds: a positive number, got $rounds"
[[ $duration =~ ^[1-9][0-9]*$ ]] || die "--duration: whole seconds, got $duration"
[[ $idle_clients =~ ^[0-9]+$ ]] || die "--idle: a number, got $idle_clients"

need_tools nginx haproxy wrk python3 taskset pgrep cargo timeout

proxies=(spoke nginx haproxy)
# key lua-script connections path
scenarios=(
    "ka report.lua 50 /small"
    "close close.lua 50 /small"
    "1m report.lua 10 /1m"
    "post post.lua 10 /echo"
    "lat report.lua 10 /small"
)

# The time limit: the runs, plus generous room for builds, starts, idle and 1 GiB.
runs=$((rounds * ${#scenarios[@]} * ${#proxies[@]}))
bench_setup $((runs * (duration + 10) + rounds * 240 + 600))

# Descriptors for the idle clients: the helper holds them, and so does the proxy
# (HAProxy two per client, so its maxconn is half the limit; see bench-lib.sh).
idle_max=$(((fd_limit - 200) / 2 - 100))
if ((idle_clients > idle_max)); then
    idle_clients=$((idle_max > 0 ? idle_max : 0))
    say "ulimit -n is $fd_limit: idle clients lowered to $idle_clients"
fi

build_spoke
pick_ports
write_lua
results="$tmp/results.tsv"
: >"$results"

say "starting the origin (3 ports) and the proxies"
start_origin
start_spoke
start_nginx_proxy
start_haproxy

say "warming up each proxy (1 s)"
for proxy in "${proxies[@]}"; do
    run_wrk report.lua 10 1 "http://127.0.0.1:$(proxy_port "$proxy")/small" >/dev/null
done

# One wrk run against one proxy, recorded with the proxy's CPU use.
measure_wrk() {
    local key=$1 lua=$2 conns=$3 path=$4 proxy=$5 round=$6 pid port t0 t1 c0 c1 result
    pid=$(proxy_pid "$proxy")
    port=$(proxy_port "$proxy")
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s%N)
    result=$(run_wrk "$lua" "$conns" "$duration" "http://127.0.0.1:$port$path")
    t1=$(date +%s%N)
    c1=$(cpu_ticks "$pid")
    echo "$key proxy=$proxy round=$round $result cpu_ticks=$((c1 - c0)) wall_ns=$((t1 - t0))" >>"$results"
    say "  $key $proxy: $result cpu_ticks=$((c1 - c0))"
}

# RSS before and after $idle_clients keep-alive clients that each sent one request.
measure_idle() {
    local proxy=$1 round=$2 pid port before after log helper_pid i
    pid=$(proxy_pid "$proxy")
    port=$(proxy_port "$proxy")
    log="$tmp/logs/idle-$proxy-$round.log"
    before=$(status_kb "$pid" VmRSS)
    taskset -c "$load_cpu" timeout 300 python3 "$helper" idle 127.0.0.1 "$port" \
        "$idle_clients" /small 300 >"$log" 2>&1 &
    helper_pid=$!
    pids+=("$helper_pid")
    for i in $(seq 1200); do
        grep -q '^ready' "$log" && break
        kill -0 "$helper_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^ready' "$log" || {
        cat "$log" >&2
        die "the idle clients did not get ready against $proxy"
    }
    # Let the proxy finish its side (the last responses may still be in flight).
    sleep 1
    after=$(status_kb "$pid" VmRSS)
    kill -TERM "$helper_pid" 2>/dev/null || true
    wait "$helper_pid" 2>/dev/null || true
    echo "idle proxy=$proxy round=$round conns=$idle_clients rss_before_kb=$before rss_after_kb=$after" >>"$results"
    say "  idle $proxy: RSS ${before} kB -> ${after} kB for $idle_clients clients"
    # The proxy closes 5,000 connections; give it a moment before the next run.
    sleep 1
}

# A 1 GiB download through the proxy: throughput, CPU and peak RSS.
measure_1g() {
    local proxy=$1 round=$2 pid port reset c0 c1 t0 t1 result hwm
    pid=$(proxy_pid "$proxy")
    port=$(proxy_port "$proxy")
    reset=$(reset_hwm "$pid")
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s%N)
    result=$(taskset -c "$load_cpu" timeout 120 python3 "$helper" download 127.0.0.1 "$port" /1g) ||
        die "the 1 GiB download through $proxy failed"
    t1=$(date +%s%N)
    c1=$(cpu_ticks "$pid")
    hwm=$(max_status_kb "$pid" VmHWM)
    echo "1g proxy=$proxy round=$round $result hwm_kb=$hwm hwm_reset=$reset cpu_ticks=$((c1 - c0)) wall_ns=$((t1 - t0))" >>"$results"
    say "  1g $proxy: $result peak RSS ${hwm} kB"
}

start_time=$(date +%s)
for round in $(seq "$rounds"); do
    say "round $round of $rounds"
    for scenario in "${scenarios[@]}"; do
        read -r key lua conns path <<<"$scenario"
        for proxy in "${proxies[@]}"; do
            measure_wrk "$key" "$lua" "$conns" "$path" "$proxy" "$round"
        done
    done
    # The download before the idle clients: VmHWM can only be reset to the current
    # RSS, and an allocator may keep what 5,000 connections used.
    for proxy in "${proxies[@]}"; do
        measure_1g "$proxy" "$round"
    done
    if ((idle_clients > 0)); then
        for proxy in "${proxies[@]}"; do
            measure_idle "$proxy" "$round"
        done
    fi
done
elapsed=$(($(date +%s) - start_time))

version_of() { "$@" 2>&1 | head -n 1 || true; }
report() {
    echo "### spoke vs nginx vs HAProxy ($(date -u +%Y-%m-%d), $mode mode: $rounds round(s) of ${duration} s runs, medians)"
    echo
    echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores," \
        "Linux $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- spoke $(cd "$repo_dir" && git describe --always --dirty 2>/dev/null || echo '?')," \
        "$(version_of "$(find_tool nginx)" -v | sed 's/^nginx version: //')," \
        "$(version_of "$(find_tool haproxy)" -v | cut -d' ' -f1-3), $(version_of wrk -v | cut -d' ' -f1-2)"
    echo "- one worker per proxy pinned to CPU $proxy_cpu; wrk (1 thread), the nginx origin" \
        "(3 ports) and the helpers on CPU $load_cpu; ${elapsed} s in all"
    echo "- proxy CPU: utime+stime of the proxy over the run / wall time (100% = one core);" \
        "req per CPU-s: requests / proxy CPU-seconds; MiB/s: response bytes (request bodies for the POST)"
    echo
    python3 "$helper" report "$results"
}
if [[ -n $out_file ]]; then
    report | tee "$out_file"
else
    report
fi
