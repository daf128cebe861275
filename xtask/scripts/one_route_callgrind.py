#!/usr/bin/env python3
"""Instructions per one-route change at 10 000 routes: `one_route_cpu.py`'s configuration
and changes, with gatewayd under callgrind. Counters are zeroed once gatewayd serves, N
changes are made INTERVAL apart, and the dump's total (every thread: the watcher, the
reload, the event loop, and what gatewayd does while idle over the same time) divided by
N is the figure. Unlike CPU time it does not move with the machine's load, so it tells
small cuts apart; `callgrind_annotate --inclusive=yes DUMP` says where they go.

    python3 xtask/scripts/one_route_callgrind.py [--changes 10] [--one-file] [--out DIR] BIN
"""

import argparse
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import one_route_cpu as bench


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--one-file", action="store_true")
    parser.add_argument("--out", help="keep the callgrind dump in this directory")
    parser.add_argument("binary")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="one-route-cg-")
    config = os.path.join(work, "config")
    os.mkdir(config)
    port = bench.free_port()
    with open(os.path.join(config, "base.yaml"), "w") as f:
        f.write(bench.base_file(port))
    generation = 0
    if args.one_file:
        with open(os.path.join(config, "routes.yaml"), "w") as f:
            f.write(bench.routes_file(generation))
    else:
        for host in range(bench.HOSTS):
            with open(os.path.join(config, f"h{host}.yaml"), "w") as f:
                f.write(bench.host_file(host, generation))
    out = os.path.join(args.out or work, "callgrind.out")
    stderr = os.path.join(work, "gatewayd.stderr")
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
               args.binary, "run", "--config", config, "--ebpf", "off",
               "--access-log", "off", "--log-json", "--worker-threads", "1"]
    for flag in ("--readiness-addr", "--metrics-addr", "--admin-addr"):
        command += [flag, f"127.0.0.1:{bench.free_port()}"]
    with open(stderr, "w") as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 600
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or child.poll() is not None:
                    raise SystemExit(f"{args.binary} did not start; see {stderr}")
                time.sleep(0.5)
        time.sleep(3.0)
        lines_before = len(bench.reload_lines(stderr))
        subprocess.run(["callgrind_control", "-z", str(child.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        for _ in range(args.changes):
            generation += 1
            if args.one_file:
                bench.write_atomically(os.path.join(config, "routes.yaml"),
                                       bench.routes_file(generation))
            else:
                bench.write_atomically(os.path.join(config, "h0.yaml"),
                                       bench.host_file(0, generation))
            time.sleep(args.interval)
        time.sleep(2.0)
        subprocess.run(["callgrind_control", "-d", str(child.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        reloads = len(bench.reload_lines(stderr)) - lines_before
        dumps = [d for d in glob.glob(f"{out}.{child.pid}*") if not d.endswith(f".{child.pid}")]
        dump = max(dumps, key=os.path.getmtime)
        total = 0
        with open(dump) as lines:
            for line in lines:
                if line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
                    break
        print(f"{reloads} reloads for {args.changes} changes; "
              f"{total / max(reloads, 1) / 1e6:.2f} M instructions per change; dump {dump}")
    finally:
        child.terminate()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
