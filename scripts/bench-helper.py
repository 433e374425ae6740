#!/usr/bin/env python3
"""bench-helper.py: the parts of scripts/bench.sh and scripts/syscalls.sh that are
awkward in bash. Standard library only.

  ports N                       print N free TCP ports on 127.0.0.1
  idle HOST PORT N PATH SECS    open N keep-alive connections, send one GET on each,
                                read each answer, print "ready N", hold them SECS
                                seconds (or until killed)
  download HOST PORT PATH       GET PATH once, read the whole body, print
                                "bytes=B seconds=S status=C"
  report RESULTS.tsv            print the Markdown report of bench.sh
  syscalls REQUESTS FILE...     print strace -c summaries per request (syscalls.sh)
"""

import os
import socket
import statistics
import sys
import time

PROXIES = ["spoke", "nginx", "haproxy"]


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def read_head(sock, buf):
    """Reads until the end of a response head; returns (head, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ValueError("response without Content-Length: " + head[:200].decode("latin-1"))


def read_response(sock):
    head, rest = read_head(sock, b"")
    remaining = content_length(head) - len(rest)
    while remaining > 0:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise ConnectionError("closed inside the body")
        remaining -= len(chunk)
    return int(head.split(b" ", 2)[1])


def idle(host, port, n, path, hold):
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    socks = []
    # Batches, so the proxy's accept backlog never overflows (a dropped SYN costs 1 s).
    batch_size = 200
    for start in range(0, n, batch_size):
        batch = []
        for _ in range(min(batch_size, n - start)):
            s = socket.create_connection((host, int(port)), timeout=20)
            s.sendall(request)
            batch.append(s)
        for s in batch:
            status = read_response(s)
            if status != 200:
                raise SystemExit(f"idle: status {status}")
        socks.extend(batch)
    print(f"ready {len(socks)}", flush=True)
    time.sleep(hold)


def download(host, port, path):
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    start = time.monotonic()
    head, rest = read_head(s, b"")
    status = int(head.split(b" ", 2)[1])
    remaining = content_length(head) - len(rest)
    total = len(rest)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while remaining > 0:
        n = s.recv_into(view, min(remaining, len(buf)))
        if n == 0:
            break
        remaining -= n
        total += n
    seconds = time.monotonic() - start
    print(f"bytes={total} seconds={seconds:.3f} status={status} missing={remaining}")


# ---------------------------------------------------------------------------------
# The report.

SCENARIOS = [
    # key, title, connections
    ("ka", "small GET, keep-alive", 50),
    ("close", "small GET, `Connection: close`", 50),
    ("1m", "1 MiB GET", 10),
    ("post", "64 KiB POST", 10),
    ("lat", "small GET, latency", 10),
]
POST_BYTES = 64 * 1024


def load_results(path):
    """Rows of the TSV as dicts, grouped by (scenario, proxy)."""
    groups = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            row = dict(field.split("=", 1) for field in fields[1:])
            groups.setdefault((fields[0], row["proxy"]), []).append(row)
    return groups


def median(values):
    return statistics.median(values) if values else None


def wrk_metrics(key, rows, ticks_per_second):
    runs = []
    for r in rows:
        requests = int(r["requests"])
        seconds = int(r["duration_us"]) / 1e6
        cpu = int(r["cpu_ticks"]) / ticks_per_second
        wall = int(r["wall_ns"]) / 1e9
        sent = requests * POST_BYTES if key == "post" else int(r["bytes"])
        runs.append({
            "rps": requests / seconds,
            "mibs": sent / seconds / (1 << 20),
            "p50": int(r["p50_us"]) / 1000,
            "p99": int(r["p99_us"]) / 1000,
            "cpu": 100 * cpu / wall,
            "per_cpu": requests / cpu if cpu > 0 else float("inf"),
            "errors": int(r["errors"]),
        })
    out = {k: median([run[k] for run in runs]) for k in runs[0] if k != "errors"}
    out["errors"] = sum(run["errors"] for run in runs)
    out["rounds"] = len(runs)
    return out


def fmt(value, digits=0):
    if value is None:
        return "—"
    if value == float("inf"):
        return "∞"
    return f"{value:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.{digits}f}x"


def report(path):
    ticks = os.sysconf("SC_CLK_TCK")
    groups = load_results(path)
    proxies = [p for p in PROXIES if any(k[1] == p for k in groups)]
    m = {}
    lines = []
    lines.append("| scenario | proxy | req/s | MiB/s | p50 ms | p99 ms | proxy CPU | req per CPU-s | errors |")
    lines.append("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for key, title, conns in SCENARIOS:
        for p in proxies:
            rows = groups.get((key, p))
            if not rows:
                continue
            x = m[(key, p)] = wrk_metrics(key, rows, ticks)
            lines.append(
                f"| {title} (c={conns}) | {p} | {fmt(x['rps'])} | {fmt(x['mibs'], 1)} "
                f"| {fmt(x['p50'], 2)} | {fmt(x['p99'], 2)} | {fmt(x['cpu'])}% "
                f"| {fmt(x['per_cpu'])} | {x['errors']} |"
            )
    idle_n = None
    idle_rows = []
    for p in proxies:
        rows = groups.get(("idle", p))
        if rows:
            idle_n = int(rows[0]["conns"])
            x = m[("idle", p)] = {
                "kib": median([(int(r["rss_after_kb"]) - int(r["rss_before_kb"])) / int(r["conns"]) for r in rows]),
                "before": median([int(r["rss_before_kb"]) / 1024 for r in rows]),
                "after": median([int(r["rss_after_kb"]) / 1024 for r in rows]),
            }
            idle_rows.append(f"| {p} | {fmt(x['before'], 1)} | {fmt(x['after'], 1)} | **{fmt(x['kib'], 2)}** |")
    if idle_rows:
        lines.append("")
        lines.append(f"{idle_n:,} idle keep-alive clients, each after one small GET (RSS of the proxy's processes):")
        lines.append("")
        lines.append("| proxy | RSS before, MiB | RSS with the clients, MiB | KiB per idle connection |")
        lines.append("|---|--:|--:|--:|")
        lines.extend(idle_rows)
    big_rows = []
    for p in proxies:
        rows = groups.get(("1g", p))
        if rows:
            x = m[("1g", p)] = {
                "hwm": median([int(r["hwm_kb"]) / 1024 for r in rows]),
                "mibs": median([int(r["bytes"]) / float(r["seconds"]) / (1 << 20) for r in rows]),
                "cpu": median([100 * int(r["cpu_ticks"]) / ticks / (int(r["wall_ns"]) / 1e9) for r in rows]),
                "cpu_s": median([int(r["cpu_ticks"]) / ticks for r in rows]),
            }
            bad = sum(1 for r in rows if r["status"] != "200" or r["missing"] != "0")
            reset = "" if all(r["hwm_reset"] == "1" for r in rows) else " (not reset: includes earlier runs)"
            big_rows.append(
                f"| {p} | {fmt(x['mibs'])} | {fmt(x['cpu'])}% | {fmt(x['cpu_s'], 2)} "
                f"| **{fmt(x['hwm'], 1)}**{reset} | {bad} |"
            )
    if big_rows:
        lines.append("")
        lines.append("One 1 GiB GET (c=1):")
        lines.append("")
        lines.append("| proxy | MiB/s | proxy CPU | proxy CPU-s | peak RSS (VmHWM), MiB | errors |")
        lines.append("|---|--:|--:|--:|--:|--:|")
        lines.extend(big_rows)

    lines.append("")
    lines.append("Ratios to nginx (higher is better, except p99 and memory):")
    lines.append("")
    others = [p for p in proxies if p != "nginx"]
    header = "| scenario | metric | " + " | ".join(f"{p}/nginx" for p in others) + " |"
    lines.append(header)
    lines.append("|---|---|" + "--:|" * len(others))
    for key, title, conns in SCENARIOS:
        base = m.get((key, "nginx"))
        if not base:
            continue
        for metric, label in (("rps", "req/s"), ("per_cpu", "req per CPU-s"), ("p99", "p99")):
            if key == "lat" and metric != "p99" or key != "lat" and metric == "p99":
                continue
            cells = [ratio(m.get((key, p), {}).get(metric), base[metric]) for p in others]
            lines.append(f"| {title} (c={conns}) | {label} | " + " | ".join(cells) + " |")
    for key, metric, label in (("idle", "kib", "KiB per idle connection"), ("1g", "hwm", "peak RSS"), ("1g", "mibs", "MiB/s"), ("1g", "cpu_s", "proxy CPU-s")):
        base = m.get((key, "nginx"))
        if base:
            cells = [ratio(m.get((key, p), {}).get(metric), base[metric]) for p in others]
            title = f"{idle_n:,} idle clients" if key == "idle" else "1 GiB GET"
            lines.append(f"| {title} | {label} | " + " | ".join(cells) + " |")

    if "spoke" in proxies and "nginx" in proxies:
        lines.append("")
        lines.append("spoke against the targets of issue 7:")
        lines.append("")
        lines.append("| target | measured | met |")
        lines.append("|---|--:|:-:|")

        def target(label, value, ok, shown):
            if value is None:
                lines.append(f"| {label} | not measured | — |")
            else:
                lines.append(f"| {label} | {shown} | {'yes' if ok else '**no**'} |")

        def per_cpu_ratio(key):
            s, n = m.get((key, "spoke")), m.get((key, "nginx"))
            return s["per_cpu"] / n["per_cpu"] if s and n and n["per_cpu"] else None

        for key, label, want in (
            ("ka", "small keep-alive req per CPU-s ≥ 1.25x nginx", 1.25),
            ("close", "`Connection: close` req per CPU-s ≥ 1.1x nginx", 1.1),
            ("post", "64 KiB POST req per CPU-s ≥ nginx", 1.0),
            ("1m", "1 MiB GET req per CPU-s ≥ nginx", 1.0),
        ):
            r = per_cpu_ratio(key)
            target(label, r, r is not None and r >= want, f"{r:.2f}x" if r is not None else "")
        s, n = m.get(("lat", "spoke")), m.get(("lat", "nginx"))
        if s and n:
            target("p99 at c=10 ≤ nginx", s["p99"], s["p99"] <= n["p99"], f"{s['p99']:.2f} ms vs {n['p99']:.2f} ms")
        s = m.get(("idle", "spoke"))
        target("≤ 1 KiB per idle client", s and s["kib"], s is not None and s["kib"] <= 1.0,
               f"{s['kib']:.2f} KiB" if s else "")
        s = m.get(("1g", "spoke"))
        target("peak RSS < 16 MiB during a 1 GiB GET", s and s["hwm"], s is not None and s["hwm"] < 16,
               f"{s['hwm']:.1f} MiB" if s else "")
        errors = sum(m[(k, "spoke")]["errors"] for k, _, _ in SCENARIOS if (k, "spoke") in m)
        target("zero errors", errors, errors == 0, str(errors))
    print("\n".join(lines))


# ---------------------------------------------------------------------------------
# strace -c summaries.

def parse_strace(path):
    """{syscall: calls} from an `strace -c` summary."""
    calls = {}
    dashes = 0
    with open(path) as f:
        for line in f:
            if line.startswith("------"):
                dashes += 1
                continue
            if dashes != 1:
                continue
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(fields) >= 5 and fields[3].isdigit():
                calls[fields[-1]] = calls.get(fields[-1], 0) + int(fields[3])
    return calls


def syscalls(args):
    """args: NAME=REQUESTS=FILE ..."""
    runs = []
    for arg in args:
        name, requests, path = arg.split("=", 2)
        runs.append((name, int(requests), parse_strace(path)))
    names = sorted({s for _, _, c in runs for s in c},
                   key=lambda s: -max(c.get(s, 0) / max(r, 1) for _, r, c in runs))
    print("| system call | " + " | ".join(f"{n} per request" for n, _, _ in runs) + " |")
    print("|---|" + "--:|" * len(runs))
    for s in names:
        cells = []
        for _, r, c in runs:
            per = c.get(s, 0) / max(r, 1)
            cells.append(f"{per:.3f}" if per else "")
        if all(c.get(s, 0) / max(r, 1) < 0.0005 for _, r, c in runs):
            continue  # Start-up or timer noise, far below one per request.
        print(f"| `{s}` | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(f"**{sum(c.values()) / max(r, 1):.2f}**" for _, r, c in runs) + " |")
    print("| requests traced | " + " | ".join(f"{r:,}" for _, r, _ in runs) + " |")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        free_ports(int(args[0]))
    elif cmd == "idle":
        idle(args[0], args[1], int(args[2]), args[3], float(args[4]))
    elif cmd == "download":
        download(args[0], args[1], args[2])
    elif cmd == "report":
        report(args[0])
    elif cmd == "syscalls":
        syscalls(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
