#!/usr/bin/env python3
"""Instructions per proxied request with `--worker-threads 1` against `2`, counted by
callgrind (issue 12: "CPU per request does not rise against one worker").

Valgrind runs one thread at a time, so waiting, wake-ups and cache misses do not show:
what a second worker adds per request here is exactly what shared state costs in
instructions (locks, atomics, shared caches), none of the scheduler's noise that a
wall-clock run on two cores has (`workers_cpu.py --both-cores`).

    python3 xtask/scripts/workers_callgrind.py GATEWAYD [N] [--workers 1,2]

For each worker count, gatewayd (`--ebpf off --access-log off`, the routing of `cargo
xtask bench workers` and `workers_cpu.py`: 100 hosts x 10 prefixes) runs under
`valgrind --tool=callgrind --separate-threads=yes` in front of an nginx answering a fixed
200 over kept-alive upstream connections. Then, for HTTP/1.1 keep-alive (`h2load --h1
-c8`) and h2c (`h2load -c8 -m1`): 1000 requests to warm up, the counters zeroed, N
requests (default 20000), the counters dumped. The figure is every thread's instructions
between the two, divided by N; the per-thread split shows both workers served.
"""
import argparse
import glob
import os
import re
import subprocess
import time

from callgrind_run import wait_for_port
from workers_cpu import TARGET_HOST, TARGET_PATH, config

UP = 18680


def thread_totals(out, part):
    """Instructions by thread in dump `part` (`OUT.PART-THREAD` files)."""
    totals = {}
    for path in glob.glob(f"{out}.{part}-*"):
        thread = int(path.rsplit("-", 1)[1])
        with open(path) as lines:
            for line in lines:
                if line.startswith("summary:") or line.startswith("totals:"):
                    totals[thread] = int(line.split()[1])
                    break
    return totals


def dump(pid, out, part):
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not glob.glob(f"{out}.{part}-*"):
        if time.time() > deadline:
            raise SystemExit(f"no callgrind dump {part}")
        time.sleep(0.2)
    time.sleep(1)
    return thread_totals(out, part)


def h2load(port, n, h1):
    args = ["h2load", "-n", str(n), "-c", "8", "-m", "1", "-H", f":authority: {TARGET_HOST}",
            f"http://127.0.0.1:{port}{TARGET_PATH}"]
    if h1:
        args.insert(1, "--h1")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not match or int(match.group(1)) != n:
        raise SystemExit(f"h2load failed: {out}")


def measure(binary, workers, n, work):
    gw = UP + 10 * workers
    directory = os.path.join(work, f"gw-{workers}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        f.write(config(gw, [UP]))
    out = os.path.join(work, f"callgrind-{workers}.out")
    command = [binary, "run", "--config", directory, "--ebpf", "off", "--access-log", "off",
               "--worker-threads", str(workers), "--readiness-addr", f"127.0.0.1:{gw + 1}",
               "--metrics-addr", f"127.0.0.1:{gw + 2}", "--admin-addr", f"127.0.0.1:{gw + 3}"]
    child = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                              f"--callgrind-out-file={out}"] + command,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    figures = {}
    try:
        wait_for_port(gw)
        for part, (name, h1) in enumerate((("HTTP/1.1", True), ("h2c", False)), start=1):
            h2load(gw, 1000, h1)
            subprocess.run(["callgrind_control", "-z", str(child.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            h2load(gw, n, h1)
            totals = dump(child.pid, out, part)
            busy = sorted((t for t in totals.values() if t > n * 100), reverse=True)
            figures[name] = (sum(totals.values()) / n, [round(t / n) for t in busy])
    finally:
        child.kill()
        child.wait()
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gatewayd")
    parser.add_argument("n", nargs="?", type=int, default=20000)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    work = f"/tmp/workers-callgrind-{os.getpid()}"
    os.makedirs(work)
    print(f"dumps in {work} (callgrind_annotate them to see where instructions go)", flush=True)
    with open(f"{work}/up.conf", "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {work}/up.pid;
error_log {work}/up.err; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UP}; location / {{ return 200 "upstream\\n"; }} }} }}
""")
    up = subprocess.Popen(["nginx", "-c", f"{work}/up.conf", "-p", work], stderr=subprocess.DEVNULL)
    try:
        results = {}
        for workers in (int(w) for w in args.workers.split(",")):
            results[workers] = measure(args.gatewayd, workers, args.n, work)
            for name, (per_request, busy) in results[workers].items():
                print(f"--worker-threads {workers}: {name}: {per_request:.0f} instructions per request "
                      f"(busy threads, per request of all: {busy})", flush=True)
        if 1 in results and 2 in results:
            for name in results[1]:
                one, two = results[1][name][0], results[2][name][0]
                print(f"{name}: {one:.0f} -> {two:.0f} instructions per request ({two / one:.3f}x)")
    finally:
        up.kill()


if __name__ == "__main__":
    main()
