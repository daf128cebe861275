#!/usr/bin/env python3
"""CPU per one-route change at 10 000 routes, A/B: `cargo xtask bench reload`'s gatewayd
configuration (100 files h0..h99.yaml of one VirtualService with 100 prefixes each, plus the
Gateway, Services and EndpointSlice), h0's file rewritten aside and renamed over N times
INTERVAL apart (each change adds one route `/new-G`). Per binary and round: the median of
gatewayd's log `cpu_ms` (the reload's threads) and its whole-process utime + stime from
/proc/PID/stat over the changes, its idle CPU over the same time subtracted, divided by N.

    python3 xtask/scripts/one_route_cpu.py [--rounds 3] [--changes 40] [--perf perf.data] NAME=BIN [NAME=BIN...]

`--one-file`: the 100 VirtualServices are documents of one file instead, h0's first, and
every other change makes h0's two lines longer (the 99 documents after it move).

Binaries alternate round by round, so that the machine's neighbours weigh on each alike.
gatewayd runs pinned to CPU 1 (`taskset`), `--ebpf off --access-log off`. Nothing serves
traffic: this is the reload's own cost."""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HOSTS = 100
PREFIXES = 100
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_file(host, generation, one_file=False):
    out = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: h{host}, namespace: default}}\nspec:\n"
        f"  hosts: [h{host}.example.com]\n  gateways: [bench]\n  http:\n"
    )
    route = "    route: [{destination: {host: upstream, port: {number: 8000}}}]\n"
    if host == 0:
        out += f"  - match: [{{uri: {{prefix: /new-{generation}}}}}]\n" + route
        if one_file and generation % 2:
            # Every other change is two lines longer: the documents after it move.
            out += f"  - match: [{{uri: {{prefix: /new-{generation}-b}}}}]\n" + route
    for prefix in range(PREFIXES):
        out += f"  - match: [{{uri: {{prefix: /p{prefix}}}}}]\n" + route
    return out


def base_file(port):
    return f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*.example.com"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: upstream, namespace: default}}
spec:
  ports: [{{name: http, port: 8000, targetPort: 9}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: upstream-1
  namespace: default
  labels: {{kubernetes.io/service-name: upstream}}
addressType: IPv4
ports: [{{name: http, port: 9}}]
endpoints:
- addresses: ["127.0.0.1"]
"""


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def reload_lines(stderr):
    out = []
    with open(stderr) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            fields = record.get("fields", record)
            if "configuration reloaded" in line and "cpu_ms" in fields:
                out.append(fields)
    return out


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def routes_file(generation):
    return "---\n".join(host_file(host, generation, True) for host in range(HOSTS))


def one_round(binary, changes, interval, generation, perf=None, one_file=False):
    work = tempfile.mkdtemp(prefix="one-route-")
    config = os.path.join(work, "config")
    os.mkdir(config)
    port = free_port()
    with open(os.path.join(config, "base.yaml"), "w") as f:
        f.write(base_file(port))
    if one_file:
        with open(os.path.join(config, "routes.yaml"), "w") as f:
            f.write(routes_file(generation))
    else:
        for host in range(HOSTS):
            with open(os.path.join(config, f"h{host}.yaml"), "w") as f:
                f.write(host_file(host, generation))
    stderr = os.path.join(work, "gatewayd.stderr")
    args = ["taskset", "-c", "1", binary, "run", "--config", config, "--ebpf", "off",
            "--access-log", "off", "--log-json"]
    for flag in ("--readiness-addr", "--metrics-addr", "--admin-addr"):
        args += [flag, f"127.0.0.1:{free_port()}"]
    with open(stderr, "w") as err:
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or child.poll() is not None:
                    raise SystemExit(f"{binary} did not start; see {stderr}")
                time.sleep(0.05)
        time.sleep(1.0)
        idle_from, t0 = cpu_ticks(child.pid), time.time()
        time.sleep(3.0)
        idle_per_s = (cpu_ticks(child.pid) - idle_from) / (time.time() - t0)
        recorder = None
        if perf:
            recorder = subprocess.Popen(
                ["perf", "record", "-F", "4000", "-g", "--call-graph", "dwarf,16384",
                 "-p", str(child.pid), "-o", perf],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        before, t0 = cpu_ticks(child.pid), time.time()
        lines_before = len(reload_lines(stderr))
        for n in range(changes):
            generation += 1
            if one_file:
                write_atomically(os.path.join(config, "routes.yaml"), routes_file(generation))
            else:
                write_atomically(os.path.join(config, "h0.yaml"), host_file(0, generation))
            time.sleep(interval)
        time.sleep(0.5)
        spent = cpu_ticks(child.pid) - before - idle_per_s * (time.time() - t0)
        if recorder:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
        lines = reload_lines(stderr)[lines_before:]
        if len(lines) != changes:
            print(f"  warning: {len(lines)} reloads logged for {changes} changes", file=sys.stderr)
        process_ms = spent * 1000.0 / TICK / max(len(lines), 1)
        cpu_ms = statistics.median(float(l["cpu_ms"]) for l in lines) if lines else float("nan")
        return cpu_ms, process_ms, generation
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--one-file", action="store_true",
                        help="all 100 VirtualServices as documents of one file, h0's first; every other change makes it two lines longer")
    parser.add_argument("--perf", help="perf record the first binary's first round into this file")
    parser.add_argument("binaries", nargs="+", help="NAME=PATH")
    args = parser.parse_args()
    binaries = [b.split("=", 1) for b in args.binaries]
    results = {name: [] for name, _ in binaries}
    generation = 0
    for round_ in range(args.rounds):
        for name, path in binaries:
            perf = args.perf if round_ == 0 and name == binaries[0][0] else None
            cpu_ms, process_ms, generation = one_round(path, args.changes, args.interval, generation, perf, args.one_file)
            results[name].append((cpu_ms, process_ms))
            print(f"round {round_ + 1}: {name}: cpu_ms median {cpu_ms:.2f} ms, whole process {process_ms:.2f} ms per change", flush=True)
    print()
    print("| round | " + " | ".join(f"{name}: `cpu_ms` / whole process" for name, _ in binaries) + " |")
    print("|---|" + "---|" * len(binaries))
    for round_ in range(args.rounds):
        cells = [f"{results[name][round_][0]:.2f} / {results[name][round_][1]:.2f} ms" for name, _ in binaries]
        print(f"| {round_ + 1} | " + " | ".join(cells) + " |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
