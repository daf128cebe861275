"""The measuring part the per-request scripts share: wait for the proxy's port, warm it up,
zero callgrind's counters, run the measured load, dump, and read the dump's total; or count
the proxy's system calls over the load with strace.

`BENCH_PORT_OFFSET` (default 0) shifts every port a script uses, so that two of them can
run at once (two checkouts measured side by side)."""

import glob
import os
import signal
import socket
import subprocess
import time

PORT_OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))


def wait_for_port(port, timeout=300):
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def count_instructions(pid, port, out, load, n, warm_up=1000):
    """Instructions the process `pid` (under callgrind, dumping to `out`*) spends on `load(n)`
    after `load(warm_up)`; returns (total, path of the dump)."""
    wait_for_port(port)
    load(warm_up)
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, stdout=subprocess.DEVNULL)
    load(n)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, stdout=subprocess.DEVNULL)
    time.sleep(1)
    dump = sorted(glob.glob(f"{out}*"), key=os.path.getmtime)[-1]
    with open(dump) as lines:
        for line in lines:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1]), dump
    return 0, dump


def count_syscalls(pid, load, n, work):
    """System calls the (native) process `pid` and its threads make during `load(n)`, by
    `strace -c -f`: a dict from call name to count. Warm the proxy up before calling."""
    trace = subprocess.Popen(["strace", "-c", "-f", "-o", f"{work}/strace.txt", "-p", str(pid)])
    time.sleep(1)
    load(n)
    time.sleep(0.5)
    trace.send_signal(signal.SIGINT)
    trace.wait()
    calls = {}
    for line in open(f"{work}/strace.txt"):
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def print_syscalls(who, calls, n, unit, at_least):
    """Prints the total per `unit` and each call made at least `at_least` times per unit."""
    total = sum(calls.values())
    print(f"{who}: {n} {unit}s, {total} system calls, {total / n:.2f} per {unit}")
    for name, count in sorted(calls.items(), key=lambda kv: -kv[1]):
        if count >= n * at_least:
            print(f"  {name:<16} {count / n:.2f}")
