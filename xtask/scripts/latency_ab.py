#!/usr/bin/env python3
"""Two or more gatewayd builds (and nginx) at one fixed rate, rounds alternated: CPU per
request, p50 and p99, and the proxy core's idle entries per request.

    python3 xtask/scripts/latency_ab.py [--rate 12000] [--connections 16] [--rounds 6]
        [--seconds 3] [--nginx] [--nginx-dir NAME=DIR] NAME=GATEWAYD_BIN [NAME=GATEWAYD_BIN...]

It reuses what `cargo xtask bench latency` left in target/bench/latency-work (run that
once first): the upstream nginx, the proxy nginx and gatewayd's configuration, the same
routing. Each gatewayd gets its own copy of that configuration on a port of its own.
`--nginx-dir` adds an nginx of another configuration (DIR/nginx.conf, e.g. the bench's
with more `proxy_set_header` lines, on a port of its own). Servers run on CPU 1 with one
worker, the upstream and paced-load on CPU 0.

Why: `bench latency` measures every load level and each server once per round; this
looks at one level between builds, with the rounds alternated so that the machine's
slow and fast spells (the p50 of every target moves between ~150 and ~200 µs here at
12 000/s) fall on all of them alike, and shows those spells per round.
"""
import argparse
import glob
import os
import re
import socket
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callgrind_run import wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = os.path.join(ROOT, "target", "bench", "latency-work")
HOST, PATH = "h57.bench.example", "/p7/item"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, cpu):
    return subprocess.Popen(["taskset", "-c", cpu] + cmd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_gatewayd(name, binary):
    """gatewayd on the bench's configuration, moved to a port of its own."""
    port = free_port()
    config = os.path.join(WORK, f"ab-{name}")
    os.makedirs(config, exist_ok=True)
    with open(os.path.join(WORK, "gatewayd-1", "config.yaml")) as f:
        text = re.sub(r"targetPort: \d+", f"targetPort: {port}", f.read(), count=1)
    with open(os.path.join(config, "config.yaml"), "w") as f:
        f.write(text)
    admin = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    process = start([binary, "run", "--config", config, "--ebpf", "off", "--access-log", "off",
                     "--readiness-addr", admin[0], "--metrics-addr", admin[1],
                     "--admin-addr", admin[2], "--worker-threads", "1"], "1")
    return process, port


def nginx_port(directory):
    with open(os.path.join(directory, "nginx.conf")) as f:
        return int(re.search(r"listen 127\.0\.0\.1:(\d+);", f.read()).group(1))


def process_tree(pid):
    out = [pid]
    for children in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(children) as f:
            for child in f.read().split():
                out += process_tree(int(child))
    return out


def on_cpu_seconds(pid):
    total = 0
    for p in process_tree(pid):
        for stat in glob.glob(f"/proc/{p}/task/*/schedstat"):
            try:
                with open(stat) as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    return total / 1e9


def idle_entries(cpu):
    total = 0
    for usage in glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/cpuidle/state*/usage"):
        with open(usage) as f:
            total += int(f.read())
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=12000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--nginx", action="store_true", help="the bench's nginx as one more target")
    parser.add_argument("--nginx-dir", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--paced-load", default=os.path.join(ROOT, "target", "release", "paced-load"))
    parser.add_argument("gatewayd", nargs="+", metavar="NAME=GATEWAYD_BIN")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(WORK, "gatewayd-1", "config.yaml")):
        raise SystemExit(f"no {WORK}: run `cargo xtask bench latency` once first")

    processes = [start(["nginx", "-p", os.path.join(WORK, "upstream"),
                        "-c", os.path.join(WORK, "upstream", "nginx.conf")], "0")]
    targets = {}
    try:
        for spec in args.gatewayd:
            name, binary = spec.split("=", 1)
            process, port = start_gatewayd(name, binary)
            processes.append(process)
            targets[name] = (process.pid, port)
        nginxes = ([f"nginx={os.path.join(WORK, 'nginx')}"] if args.nginx else []) + args.nginx_dir
        for spec in nginxes:
            name, directory = spec.split("=", 1)
            directory = os.path.abspath(directory)
            process = start(["nginx", "-p", directory,
                             "-c", os.path.join(directory, "nginx.conf")], "1")
            processes.append(process)
            targets[name] = (process.pid, nginx_port(directory))
        for _, port in targets.values():
            wait_for_port(port, timeout=30)

        names = list(targets)
        rows = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                pid, port = targets[name]
                cpu, idle = on_cpu_seconds(pid), idle_entries(1)
                out = subprocess.run(
                    ["taskset", "-c", "0", args.paced_load, "--connect", f"127.0.0.1:{port}",
                     "--host", HOST, "--path", PATH, "--rate", str(args.rate),
                     "--seconds", str(args.seconds), "--connections", str(args.connections)],
                    capture_output=True, text=True, check=True).stdout
                field = lambda key: int(re.search(rf"{key}=(\d+)", out).group(1))
                ok = field("ok")
                if ok == 0:
                    raise SystemExit(f"{name}: no request answered: {out.strip()}")
                rows[name].append(((on_cpu_seconds(pid) - cpu) / ok * 1e6, field("p50_us"),
                                   field("p99_us"), (idle_entries(1) - idle) / ok))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()

    print(f"{args.rate}/s over {args.connections} connections, {args.rounds} rounds of "
          f"{args.seconds} s, targets alternated; per round:")
    for name, v in rows.items():
        print(f"{name:10} CPU µs/request median {statistics.median(x[0] for x in v):.1f} "
              f"{[round(x[0], 1) for x in v]}")
        print(f"{'':10} p50 µs median {statistics.median(x[1] for x in v)} {[x[1] for x in v]}"
              f"  p99 {[x[2] for x in v]}")
        print(f"{'':10} CPU 1 idle entries per request {[round(x[3], 2) for x in v]}")


if __name__ == "__main__":
    main()
