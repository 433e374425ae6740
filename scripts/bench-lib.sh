# bench-lib.sh: shared by bench.sh and syscalls.sh (sourced, not run). It starts the
# nginx origin and the three proxies (spoke, nginx, HAProxy) in a temporary
# directory, pinned with taskset, and stops exactly the processes it started.
#
# The sourcing script sets `me` (its name for messages) before sourcing, and calls
# `bench_setup` before anything else.

scripts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$scripts_dir/.." && pwd)
helper="$scripts_dir/bench-helper.py"

# The proxy runs on PROXY_CPU; wrk, the origin and the helpers on LOAD_CPU.
proxy_cpu=${PROXY_CPU:-0}
load_cpu=${LOAD_CPU:-1}

# The command that installs everything on Debian or Ubuntu.
install_hint="sudo apt-get install -y nginx haproxy wrk strace linux-perf python3 procps util-linux"

say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() {
    printf '%s: %s\n' "$me" "$*" >&2
    exit 1
}

# PIDs of everything started here, stopped by bench_cleanup (and only these).
pids=()
tmp=""
keep_tmp=0
watchdog=""

# Finds a tool on PATH or in the sbin directories (nginx and haproxy live in
# /usr/sbin, which is not on an ordinary user's PATH).
find_tool() {
    local dir
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
        return
    fi
    for dir in /usr/sbin /sbin /usr/local/sbin; do
        if [[ -x $dir/$1 ]]; then
            echo "$dir/$1"
            return
        fi
    done
    return 1
}

# need_tools TOOL...: fails, naming what is missing and how to install it.
need_tools() {
    local tool missing=()
    for tool in "$@"; do
        find_tool "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]} > 0)); then
        die "missing: ${missing[*]}; install with: $install_hint"
    fi
}

# bench_setup MAX_SECONDS: temp dir, cleanup trap, a watchdog that ends the whole
# run after MAX_SECONDS, more file descriptors, and the cargo target directory.
bench_setup() {
    local max_seconds=$1
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/spoke-bench.XXXXXX")
    # nginx workers run as nobody when started by root; they must reach the temp dir.
    chmod 755 "$tmp"
    mkdir -p "$tmp/logs" "$tmp/www"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    # The watchdog: a bounded run even when a tool hangs. It holds none of our
    # output open, and its sleep dies with it when the cleanup stops it.
    (
        exec >/dev/null 2>&1 </dev/null
        sleep "$max_seconds" &
        sleeper=$!
        trap 'kill "$sleeper"; exit 0' TERM
        wait "$sleeper" && kill -TERM $$
    ) &
    watchdog=$!
    trap 'say "stopped by SIGTERM (or the time limit of ${max_seconds}s)"; exit 143' TERM
    # 5,000 idle clients plus the proxy's side: raise the soft limit to the hard one.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    fd_limit=$(ulimit -n)
    if ((proxy_cpu == load_cpu)) || (($(nproc) < 2)); then
        say "warning: fewer than 2 cores (or PROXY_CPU = LOAD_CPU): proxy and load share a core"
    fi
}

bench_cleanup() {
    trap - EXIT INT TERM
    if [[ -n $watchdog ]]; then
        kill "$watchdog" 2>/dev/null || true
        wait "$watchdog" 2>/dev/null || true
    fi
    if ((${#pids[@]} > 0)); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # Up to 5 s for a graceful exit, then SIGKILL.
        local i
        for i in $(seq 50); do
            local alive=0 pid
            for pid in "${pids[@]}"; do
                kill -0 "$pid" 2>/dev/null && alive=1
            done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    if [[ -n $tmp ]]; then
        if ((keep_tmp)); then
            say "kept $tmp (logs, configs, raw results)"
        else
            rm -rf "$tmp"
        fi
    fi
}

# start NAME CPU COMMAND...: runs COMMAND in the background pinned to CPU, output in
# $tmp/logs/NAME.log; sets `started` to its PID (taskset execs, so it is the
# command's own PID).
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$tmp/logs/$name.log" 2>&1 &
    started=$!
    pids+=("$started")
}

# wait_listening PORT PID NAME: until PORT accepts, failing if PID dies or 15 s pass.
wait_listening() {
    local port=$1 pid=$2 name=$3 i
    for i in $(seq 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$tmp/logs/$name.log" >&2 || true
            die "$name exited before listening on port $port"
        fi
        sleep 0.1
    done
    die "$name is not listening on port $port after 15 s"
}

# The PID and its children (nginx's master and its worker).
tree_pids() {
    echo "$1"
    pgrep -P "$1" || true
}

# cpu_ticks PID: utime + stime of the process and its children, in clock ticks.
cpu_ticks() {
    local total=0 pid stat fields
    for pid in $(tree_pids "$1"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # Fields after "pid (comm) ": the first is field 3, so utime (14) is [11].
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# status_kb PID FIELD: the sum of FIELD (VmRSS, VmHWM) over the tree, in kB.
status_kb() {
    local pid total=0 value
    for pid in $(tree_pids "$1"); do
        value=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

# max_status_kb PID FIELD: the largest FIELD of one process in the tree (the nginx
# worker, not worker + master).
max_status_kb() {
    local pid max=0 value
    for pid in $(tree_pids "$1"); do
        value=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
        ((${value:-0} > max)) && max=$value
    done
    echo "$max"
}

# reset_hwm PID: resets VmHWM of the tree to the current RSS (Linux 4.0+, needs to
# own the processes); prints 1 when every reset worked, else 0.
reset_hwm() {
    local pid ok=1
    for pid in $(tree_pids "$1"); do
        echo 5 2>/dev/null >"/proc/$pid/clear_refs" || ok=0
    done
    echo "$ok"
}

build_spoke() {
    say "building spoke (release)"
    (cd "$repo_dir" && cargo build --release --quiet --bin spoke) || die "cargo build failed"
    local target=${CARGO_TARGET_DIR:-$repo_dir/target}
    [[ $target = /* ]] || target="$repo_dir/$target"
    spoke_bin="$target/release/spoke"
    [[ -x $spoke_bin ]] || die "no binary at $spoke_bin"
}

# Picks the ports: three for the origin, one per proxy, one for spoke's admin API.
pick_ports() {
    local ports
    read -r -a ports <<<"$(python3 "$helper" ports 7)"
    origin_ports=("${ports[@]:0:3}")
    spoke_port=${ports[3]}
    spoke_admin_port=${ports[4]}
    nginx_port=${ports[5]}
    haproxy_port=${ports[6]}
}

# nginx's temp paths, all inside the run's directory (none is used: bodies stay in
# memory, see below).
nginx_temp_paths() {
    local dir=$1 kind
    for kind in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${kind}_temp_path $dir/$kind;"
    done
}

# The origin: one nginx process (master_process off) on the load core, three ports.
#   /small  a 100-byte file      /1m  a 1 MiB file      /1g  a 1 GiB sparse file
#   /echo   POST target: nginx reads and discards the body, then answers "ok\n"
#           (stock nginx cannot echo a body without extra modules; the 64 KiB still
#           crosses the proxy and is read by the origin, which is what is measured).
start_origin() {
    local nginx dir=$tmp/origin port
    nginx=$(find_tool nginx)
    mkdir -p "$dir"
    head -c 100 /dev/zero | tr '\0' 'x' >"$tmp/www/small"
    head -c $((1 << 20)) /dev/zero >"$tmp/www/1m"
    # Sparse: no disk space used, and nginx sends it with sendfile from the page cache.
    truncate -s 1G "$tmp/www/1g"
    {
        echo "daemon off;"
        echo "master_process off;"
        echo "worker_processes 1;"
        echo "pid $dir/nginx.pid;"
        echo "error_log $dir/error.log error;"
        echo "worker_rlimit_nofile $fd_limit;"
        echo "events { worker_connections $((fd_limit - 100)); }"
        echo "http {"
        echo "    access_log off;"
        echo "    sendfile on;"
        echo "    tcp_nopush on;"
        echo "    keepalive_requests 1000000;"
        echo "    keepalive_timeout 120s;"
        echo "    default_type application/octet-stream;"
        nginx_temp_paths "$dir"
        echo "    server {"
        for port in "${origin_ports[@]}"; do
            echo "        listen 127.0.0.1:$port backlog=4096;"
        done
        echo "        root $tmp/www;"
        echo "        location = /echo {"
        echo "            client_body_buffer_size 128k;"
        echo "            client_max_body_size 1m;"
        echo "            return 200 \"ok\\n\";"
        echo "        }"
        echo "    }"
        echo "}"
    } >"$dir/nginx.conf"
    start origin "$load_cpu" "$nginx" -p "$dir" -c "$dir/nginx.conf"
    origin_pid=$started
    for port in "${origin_ports[@]}"; do
        wait_listening "$port" "$origin_pid" origin
    done
}

start_spoke() {
    local dir=$tmp/spoke backends="" port
    mkdir -p "$dir"
    for port in "${origin_ports[@]}"; do
        backends+="${backends:+, }\"http://127.0.0.1:$port\""
    done
    cat >"$dir/config.json" <<EOF
{
  "port": $spoke_port,
  "bind": "127.0.0.1",
  "admin_port": $spoke_admin_port,
  "workers": 1,
  "health_check_frequency": "1h",
  "health_check_path": "/small",
  "shutdown_timeout": "1s",
  "max_connections": $((fd_limit - 200)),
  "backend_keepalive": 32,
  "log_level": "error",
  "backends": [$backends]
}
EOF
    "$spoke_bin" --check --config "$dir/config.json" >/dev/null || die "spoke rejects $dir/config.json"
    start spoke "$proxy_cpu" "$spoke_bin" --config "$dir/config.json"
    spoke_pid=$started
    wait_listening "$spoke_port" "$spoke_pid" spoke
}

# nginx as the proxy: master + 1 worker, upstream keepalive 32. Bodies stay in
# memory both ways (client_body_buffer_size 128k for the 64 KiB upload,
# proxy_max_temp_file_size 0 so a 1 GiB download is streamed, never spooled to disk).
start_nginx_proxy() {
    local nginx dir=$tmp/nginx port
    nginx=$(find_tool nginx)
    mkdir -p "$dir"
    {
        echo "daemon off;"
        echo "worker_processes 1;"
        echo "pid $dir/nginx.pid;"
        echo "error_log $dir/error.log error;"
        echo "worker_rlimit_nofile $fd_limit;"
        echo "events { worker_connections $((fd_limit - 100)); }"
        echo "http {"
        echo "    access_log off;"
        echo "    keepalive_requests 1000000;"
        echo "    keepalive_timeout 120s;"
        echo "    client_body_buffer_size 128k;"
        echo "    client_max_body_size 1m;"
        nginx_temp_paths "$dir"
        echo "    upstream origin {"
        for port in "${origin_ports[@]}"; do
            echo "        server 127.0.0.1:$port;"
        done
        echo "        keepalive 32;"
        echo "        keepalive_requests 1000000;"
        echo "    }"
        echo "    server {"
        echo "        listen 127.0.0.1:$nginx_port backlog=4096;"
        echo "        location / {"
        echo "            proxy_pass http://origin;"
        echo "            proxy_http_version 1.1;"
        echo "            proxy_set_header Connection \"\";"
        echo "            proxy_max_temp_file_size 0;"
        echo "        }"
        echo "    }"
        echo "}"
    } >"$dir/nginx.conf"
    start nginx "$proxy_cpu" "$nginx" -p "$dir" -c "$dir/nginx.conf"
    nginx_pid=$started
    wait_listening "$nginx_port" "$nginx_pid" nginx
}

start_haproxy() {
    # HAProxy wants two descriptors per connection (client and server side).
    local haproxy dir=$tmp/haproxy i=0 port maxconn=$(((fd_limit - 200) / 2))
    haproxy=$(find_tool haproxy)
    mkdir -p "$dir"
    {
        echo "global"
        echo "    nbthread 1"
        echo "    maxconn $maxconn"
        echo "defaults"
        echo "    mode http"
        echo "    option http-keep-alive"
        echo "    http-reuse safe"
        echo "    timeout connect 2s"
        echo "    timeout client 120s"
        echo "    timeout server 30s"
        echo "    timeout http-keep-alive 120s"
        echo "frontend bench"
        echo "    bind 127.0.0.1:$haproxy_port"
        echo "    maxconn $maxconn"
        echo "    default_backend origin"
        echo "backend origin"
        echo "    balance roundrobin"
        for port in "${origin_ports[@]}"; do
            i=$((i + 1))
            echo "    server o$i 127.0.0.1:$port"
        done
    } >"$dir/haproxy.cfg"
    "$haproxy" -c -q -f "$dir/haproxy.cfg" || die "haproxy rejects $dir/haproxy.cfg"
    start haproxy "$proxy_cpu" "$haproxy" -db -f "$dir/haproxy.cfg"
    haproxy_pid=$started
    wait_listening "$haproxy_port" "$haproxy_pid" haproxy
}

# proxy_port NAME / proxy_pid NAME
proxy_port() {
    local var="${1}_port"
    echo "${!var}"
}
proxy_pid() {
    local var="${1}_pid"
    echo "${!var}"
}

# Lua for wrk: `done` prints one machine-readable line; post.lua and close.lua add
# the request shape.
write_lua() {
    cat >"$tmp/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d bytes=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF
    {
        echo 'wrk.method = "POST"'
        echo 'wrk.body = string.rep("x", 65536)'
        echo 'wrk.headers["Content-Type"] = "application/octet-stream"'
        cat "$tmp/report.lua"
    } >"$tmp/post.lua"
    {
        echo 'wrk.headers["Connection"] = "close"'
        cat "$tmp/report.lua"
    } >"$tmp/close.lua"
}

# run_wrk LUA CONNECTIONS SECONDS URL: prints wrk's RESULT fields (without the word).
run_wrk() {
    local lua=$1 conns=$2 seconds=$3 url=$4 out
    out=$(timeout $((seconds + 20)) taskset -c "$load_cpu" wrk -t1 "-c$conns" "-d${seconds}s" \
        --timeout 5s -s "$tmp/$lua" "$url" 2>&1) || {
        printf '%s\n' "$out" >&2
        die "wrk failed against $url"
    }
    out=$(printf '%s\n' "$out" | sed -n 's/^RESULT //p')
    [[ -n $out ]] || die "wrk printed no result for $url"
    echo "$out"
}
