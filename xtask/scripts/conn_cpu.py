#!/usr/bin/env python3
"""Wall-clock CPU per new connection, gatewayd against nginx, made to repeat: the figure
issue 15 found not to reproduce (16.6 µs against nginx's 21.3 in one run of `bench http`,
41.5 against 32.2 in another).

    python3 xtask/scripts/conn_cpu.py [--rounds 9] [--seconds 2] [--connections 1] [--keep-alive] NAME=BIN [NAME=BIN...]

With `--keep-alive` the same measurement per kept-alive request instead (wrk keeps its
connections open): the wall-clock counterpart of `h1_callgrind.py`, with the kernel's
share (system calls, wake-ups) counted too, on any build profile.

Each proxy (every gatewayd given: one worker, `--ebpf off --access-log off`; and nginx:
one worker process, `proxy_http_version 1.1`, an upstream keepalive pool) sits in front
of an nginx answering a fixed 200 over kept-alive upstream connections, as
`conn_callgrind.py` sets them up. Load: `wrk -t1 -cC -dS` with `Connection: close`, so
every request is a new connection, C at a time (default 1: one connection after the
other, so that no proxy batches accepts or wake-ups and the figure does not depend on
how busy the machine is). The proxies run on CPU 1, wrk and the upstream on CPU 0.

Why the old row did not repeat: it was wrk -c10 at saturation with utime+stime in clock
ticks, three rounds of 3 s, one median per server. At saturation the work per
connection depends on how many events each wake-up finds (how much the proxy batches),
which depends on how much CPU the load generator and the machine's other tenants leave
it; the two proxies were measured minutes apart, so they met different neighbours.
Here: CPU is each proxy's on-CPU time from /proc/PID/task/*/schedstat (nanoseconds,
every thread), its idle CPU over the same time subtracted; the proxies alternate within
each round (the order rotating), and the ratio is taken round by round, between runs
seconds apart, and reported as the median of the rounds with its min–max. The last
column splits it into user and kernel time (utime and stime, in clock ticks: coarser,
the medians of the rounds).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callgrind_run import wait_for_port  # noqa: E402
from one_route_config import one_route_config  # noqa: E402

SERVER_CPU, CLIENT_CPU = "1", "0"
UP = 18690
REQUEST_PATH = "/item"


def on_cpu_ns(pid):
    """Time on CPU of every thread of `pid`, in ns (the scheduler's own account)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def thread_counters(pid):
    """Summed over every thread of `pid`: utime and stime in clock ticks, minor page
    faults (/proc/PID/task/*/stat), and context switches, voluntary or not (status)."""
    user = kernel = faults = switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            faults += int(fields[7])
            user += int(fields[11])
            kernel += int(fields[12])
            with open(f"/proc/{pid}/task/{task}/status") as f:
                switches += sum(int(line.split()[-1]) for line in f if "ctxt_switches:" in line)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return user, kernel, faults, switches


TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def wrk(port, seconds, connections, keep_alive=False):
    close = [] if keep_alive else ["-H", "Connection: close"]
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "-H", "Host: example.com", *close,
         f"http://127.0.0.1:{port}{REQUEST_PATH}"],
        capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out and "connect 0, read 0, write 0, timeout 0" not in out:
        raise SystemExit(f"wrk on port {port} saw errors:\n{out}")
    for line in out.splitlines():
        if "requests in" in line:
            return int(line.split()[0])
    raise SystemExit(f"wrk output without a request count:\n{out}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("binaries", nargs="+", metavar="NAME=BIN")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="conn-cpu-")
    with open(f"{work}/up.conf", "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {work}/up.pid;
error_log {work}/up.err; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UP}; location / {{ return 200 "upstream\\n"; }} }} }}
""")
    children = [subprocess.Popen(["taskset", "-c", CLIENT_CPU, "nginx", "-c", f"{work}/up.conf",
                                  "-p", work], stderr=subprocess.DEVNULL)]
    servers = []  # (name, pid, port)
    try:
        port = UP + 1
        for spec in args.binaries:
            name, binary = spec.split("=", 1)
            with open(f"{work}/{name}.yaml", "w") as f:
                f.write(one_route_config(port, UP))
            child = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, binary, "run", "--config", f"{work}/{name}.yaml",
                 "--ebpf", "off", "--worker-threads", "1", "--access-log", "off",
                 "--readiness-addr", f"127.0.0.1:{port + 100}",
                 "--metrics-addr", f"127.0.0.1:{port + 200}",
                 "--admin-addr", f"127.0.0.1:{port + 300}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children.append(child)
            servers.append((name, child.pid, port))
            port += 1
        if not args.no_nginx:
            with open(f"{work}/nginx.conf", "w") as f:
                f.write(f"""daemon off; master_process off; worker_processes 1; pid {work}/gw.pid;
error_log {work}/gw.err; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{UP}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
            child = subprocess.Popen(["taskset", "-c", SERVER_CPU, "nginx", "-c",
                                      f"{work}/nginx.conf", "-p", work], stderr=subprocess.DEVNULL)
            children.append(child)
            servers.append(("nginx", child.pid, port))
        for _, _, p in servers:
            wait_for_port(p, timeout=60)
            wrk(p, 1, args.connections, args.keep_alive)  # warm up: pools, caches, allocator
        time.sleep(1)
        idle_from = {pid: on_cpu_ns(pid) for _, pid, _ in servers}
        t0 = time.monotonic()
        time.sleep(3)
        idle_ns_per_s = {pid: (on_cpu_ns(pid) - idle_from[pid]) / (time.monotonic() - t0)
                         for _, pid, _ in servers}

        per_conn = {name: [] for name, _, _ in servers}
        # utime and stime per connection: the split of the scheduler's figure, in ticks.
        user_us = {name: [] for name, _, _ in servers}
        kernel_us = {name: [] for name, _, _ in servers}
        rates = {name: [] for name, _, _ in servers}
        per_event = {name: [] for name, _, _ in servers}
        ratios = {name: [] for name, _, _ in servers[:-1]}
        for round_ in range(args.rounds):
            order = servers[round_ % len(servers):] + servers[:round_ % len(servers)]
            this_round = {}
            for name, pid, p in order:
                before, t = on_cpu_ns(pid), time.monotonic()
                counted = thread_counters(pid)
                n = wrk(p, args.seconds, args.connections, args.keep_alive)
                spent = on_cpu_ns(pid) - before - idle_ns_per_s[pid] * (time.monotonic() - t)
                user, kernel, faults, switches = (
                    now - then for now, then in zip(thread_counters(pid), counted))
                per_event[name].append((faults / n, switches / n))
                user_us[name].append(user * TICK_US / n)
                kernel_us[name].append(kernel * TICK_US / n)
                this_round[name] = spent / n / 1000.0
                per_conn[name].append(this_round[name])
                rates[name].append(n / args.seconds)
            reference = servers[-1][0]
            line = f"round {round_}: " + ", ".join(
                f"{name} {this_round[name]:.1f} µs" for name, _, _ in servers)
            for name, _, _ in servers[:-1]:
                ratios[name].append(this_round[name] / this_round[reference])
            print(line, flush=True)

        reference = servers[-1][0]
        unit = "request" if args.keep_alive else "connection"
        how = "kept alive" if args.keep_alive else "Connection: close"
        print(f"\nCPU µs per {unit}, median (min–max) of {args.rounds} rounds, "
              f"wrk -t1 -c{args.connections} -d{args.seconds}s, {how}")
        print(f"| proxy | CPU µs per {unit} | {unit}s/s | ÷ " + reference + " (per round) "
              "| user / kernel µs (ticks) |")
        print("|---|---|---|---|---|")
        for name, _, _ in servers:
            v, r = per_conn[name], rates[name]
            ratio = ""
            if name in ratios:
                q = ratios[name]
                ratio = f"{statistics.median(q):.2f} ({min(q):.2f}–{max(q):.2f})"
            split = (f"{statistics.median(user_us[name]):.1f} / "
                     f"{statistics.median(kernel_us[name]):.1f}")
            print(f"| {name} | {statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f}) | "
                  f"{statistics.median(r):.0f} | {ratio} | {split} |")
        for name, _, _ in servers:
            faults = statistics.median(f for f, _ in per_event[name])
            switches = statistics.median(c for _, c in per_event[name])
            print(f"{name}: {faults:.3f} page faults and {switches:.3f} context switches "
                  f"per {unit} (medians)")
        print(f"idle CPU subtracted (µs/s): " + ", ".join(
            f"{name} {idle_ns_per_s[pid] / 1000:.0f}" for name, pid, _ in servers))
    finally:
        for child in children:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
