#!/usr/bin/env python3
"""CPU per proxied request with one worker against two (issue 12), without a release build
of its own: `cargo xtask bench workers`' routing (100 hosts x 10 prefixes, one Service of
two endpoints) and load, with the demo upstream instead of nginx.

Two gatewayds (`--worker-threads 1` and `2`, `--ebpf off --access-log off`) are pinned to
CPU 1, the upstreams and the load to CPU 0. With `--both-cores`, the gatewayds get both
cores (`taskset -c 0,1`) and the upstreams and the load are not pinned: the two workers
can run at once, but share the two cores with the load, so the figure is noisy (and on a
machine shared with other work, more so); callgrind's count (`workers_callgrind.py`) is
the exact one. Each round runs, for each gatewayd (the order
alternating round by round), HTTP/1.1 keep-alive at a fixed rate (paced-load, open loop,
16 connections) and h2c at the same rate (h2load -c8 -m1 --rps); the figure is gatewayd's
utime + stime from /proc over the run divided by the requests that succeeded.

    python3 xtask/scripts/workers_cpu.py --gatewayd BIN --upstream BIN --paced-load BIN
        [--rounds 5] [--rate 4000] [--seconds 5] [--both-cores]
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")
# Where gatewayd runs, and where the upstreams and the load run (empty: anywhere).
GATEWAYD_CPUS, LOAD_CPUS = "1", "0"


def pinned(cpus, args):
    return ["taskset", "-c", cpus] + args if cpus else args
HOSTS, PREFIXES = 100, 10
TARGET_HOST, TARGET_PATH = "h57.bench.example", "/p7/item"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, child, what):
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or child.poll() is not None:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.1)


def cpu_seconds(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def process_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def config(port, upstreams):
    hosts = ", ".join(f'"h{h}.bench.example"' for h in range(HOSTS))
    out = f"""apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{hosts}]
---
apiVersion: v1
kind: Service
metadata: {{name: up, namespace: default}}
spec:
  ports: [{{name: http, port: 8000}}]
"""
    for i, upstream in enumerate(upstreams):
        out += (
            f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: up-{i}, "
            f"namespace: default, labels: {{kubernetes.io/service-name: up}}}}\naddressType: IPv4\n"
            f"ports: [{{name: http, port: {upstream}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n"
        )
    for h in range(HOSTS):
        out += (
            f"---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: h{h}, "
            f"namespace: default}}\nspec:\n  hosts: [h{h}.bench.example]\n  gateways: [bench]\n  http:\n"
        )
        for p in range(PREFIXES):
            out += f"  - match: [{{uri: {{prefix: /p{p}/}}}}]\n    route: [{{destination: {{host: up}}}}]\n"
    return out


def start_gatewayd(binary, work, upstreams, workers):
    port = free_port()
    directory = os.path.join(work, f"gatewayd-{workers}")
    os.makedirs(directory)
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        f.write(config(port, upstreams))
    args = pinned(GATEWAYD_CPUS, [binary, "run", "--config", directory, "--ebpf", "off",
                                  "--access-log", "off", "--worker-threads", str(workers)])
    for flag in ("--readiness-addr", "--metrics-addr", "--admin-addr"):
        args += [flag, f"127.0.0.1:{free_port()}"]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(directory, "stderr"), "w"))
    wait_port(port, child, f"gatewayd --worker-threads {workers}")
    return child, port


def h1_run(paced_load, pid, port, rate, seconds, perf_stat=False):
    stat = None
    if perf_stat:
        # What a request costs beside instructions: wake-ups, context switches, futex
        # (lock) waits, epoll_waits, per request.
        stat = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e",
             "context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,instructions:u",
             "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
    before = process_cpu_seconds(pid)
    out = subprocess.run(
        pinned(LOAD_CPUS, [paced_load, "--connect", f"127.0.0.1:{port}", "--host", TARGET_HOST,
                           "--path", TARGET_PATH, "--rate", str(rate), "--seconds", str(seconds),
                           "--connections", "16"]),
        capture_output=True, text=True, check=True).stdout
    used = process_cpu_seconds(pid) - before
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    ok, errors = float(fields.get("ok", 0)), float(fields.get("errors", 1))
    if ok == 0 or errors != 0:
        raise SystemExit(f"paced-load failed: {out}")
    if stat:
        stat.send_signal(2)
        _, err = stat.communicate()
        counts = []
        for line in err.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                counts.append(f"{parts[2]} {float(parts[0]) / ok:.2f}")
        print("  per request: " + ", ".join(counts), flush=True)
    return used / ok * 1e6


def h2_run(pid, port, rate, seconds, record=None):
    clients = 8
    recorder = None
    if record:
        recorder = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-p", str(pid), "-o", record],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    before = process_cpu_seconds(pid)
    out = subprocess.run(
        pinned(LOAD_CPUS, ["h2load", "-c", str(clients), "-m", "1", "--rps", str(rate // clients),
                           "-D", str(seconds), "-H", f":authority: {TARGET_HOST}",
                           f"http://127.0.0.1:{port}{TARGET_PATH}"]),
        capture_output=True, text=True, check=True).stdout
    used = process_cpu_seconds(pid) - before
    if recorder:
        recorder.send_signal(2)
        recorder.wait()
    match = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    if not match or int(match.group(4)) == 0:
        raise SystemExit(f"h2load failed: {out}")
    return used / int(match.group(4)) * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gatewayd", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--paced-load", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=4000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--perf-record", help="perf record each gatewayd's first h2c run into this directory")
    parser.add_argument("--perf-stat", action="store_true",
                        help="also count context switches, futex calls and epoll_waits per HTTP/1.1 request")
    parser.add_argument("--both-cores", action="store_true",
                        help="gatewayd on CPUs 0 and 1, the upstreams and the load unpinned")
    args = parser.parse_args()
    if args.both_cores:
        global GATEWAYD_CPUS, LOAD_CPUS
        GATEWAYD_CPUS, LOAD_CPUS = "0,1", ""
    work = tempfile.mkdtemp(prefix="workers-cpu-")
    upstreams, children = [], []
    try:
        for i in range(2):
            port = free_port()
            child = subprocess.Popen(pinned(LOAD_CPUS, [args.upstream, "--listen", f"127.0.0.1:{port}",
                                                        "--name", f"u{i}"]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children.append(child)
            wait_port(port, child, "demo-upstream")
            upstreams.append(port)
        servers = {}
        for workers in (1, 2):
            child, port = start_gatewayd(args.gatewayd, work, upstreams, workers)
            children.append(child)
            servers[workers] = (child.pid, port)
        time.sleep(2)
        figures = {w: {"h1": [], "h2": []} for w in servers}
        for round_ in range(args.rounds):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            for workers in order:
                pid, port = servers[workers]
                h1 = h1_run(args.paced_load, pid, port, args.rate, args.seconds, args.perf_stat)
                record = (os.path.join(args.perf_record, f"h2-{workers}.data")
                          if args.perf_record and round_ == 0 else None)
                h2 = h2_run(pid, port, args.rate, args.seconds, record)
                figures[workers]["h1"].append(h1)
                figures[workers]["h2"].append(h2)
                print(f"round {round_ + 1}: {workers} worker(s): HTTP/1.1 {h1:.1f} µs/req, h2c {h2:.1f} µs/req "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        print("\n| gatewayd | HTTP/1.1 CPU µs / req, median (min–max) | h2c CPU µs / req, median (min–max) |")
        print("|---|---|---|")
        for workers, f in figures.items():
            cells = [f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})" for v in (f["h1"], f["h2"])]
            print(f"| {workers} worker(s) | {cells[0]} | {cells[1]} |")
        ratio = lambda k: statistics.median(figures[2][k]) / statistics.median(figures[1][k])
        print(f"\ntwo workers against one: HTTP/1.1 {ratio('h1'):.2f}x, h2c {ratio('h2'):.2f}x; "
              f"load average after {os.getloadavg()[0]:.1f}")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    main()
