"""The measuring part the per-request scripts share: wait for the proxy's port, warm it up,
zero callgrind's counters, run the measured load, dump, and read the dump's total; or count
the proxy's system calls over the load with strace; or measure its user and kernel CPU time
natively, pinned as `cargo xtask bench` pins.

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


def dump_events(dump):
    """Every event a callgrind dump totals (`Ir`, and with `--cache-sim=yes --branch-sim=yes`
    also the cache's `D1mr`, `DLmr`... and the branches' `Bc`, `Bcm`...): name to count."""
    names = totals = None
    with open(dump) as lines:
        for line in lines:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("summary:") or line.startswith("totals:"):
                totals = [int(v) for v in line.split()[1:]]
    return dict(zip(names or [], totals or []))


# Callgrind's cache and branch-predictor simulation (`--cache-sim`): what instructions alone do
# not show when CPU time and instruction counts disagree (`perf stat` has no counters here).
CACHE_SIM_ARGS = ["--cache-sim=yes", "--branch-sim=yes"]


def callgrind_options(cache_sim):
    """The options a script's callgrind run takes beyond its output file: the simulation
    when asked, then whatever `CALLGRIND_EXTRA` names (e.g. `--dump-instr=yes`)."""
    return (CACHE_SIM_ARGS if cache_sim else []) + os.environ.get("CALLGRIND_EXTRA", "").split()


def print_cache_sim(dump, n, unit):
    """Per `unit`: data reads and writes, first- and last-level cache misses, branches and
    mispredictions, from a dump made with `CACHE_SIM_ARGS`."""
    events = dump_events(dump)
    per = lambda *names: sum(events.get(name, 0) for name in names) / n
    print(f"  per {unit}: data reads {per('Dr'):.0f}, writes {per('Dw'):.0f}; "
          f"L1 misses: instruction {per('I1mr'):.0f}, data {per('D1mr', 'D1mw'):.0f}; "
          f"last-level misses: instruction {per('ILmr'):.1f}, data {per('DLmr', 'DLmw'):.1f}; "
          f"branches {per('Bc', 'Bi'):.0f}, mispredicted {per('Bcm', 'Bim'):.0f}")


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


def user_system_ticks(pid):
    """utime and stime of every thread of `pid`, in clock ticks."""
    user = system = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        fields = open(f"/proc/{pid}/task/{task}/stat").read().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def cpu_rounds(pid, port, n, rounds, perf_dir, who, connections=16):
    """The proxy `pid` runs natively on CPU 1 (the caller pins it), its upstream on CPU 0:
    per round, `h2load --h1 -c16 -nN` from CPU 0 and the proxy's user and kernel CPU time
    per request; with `perf_dir`, each round sampled by `perf record -F 4000` into
    `perf_dir/WHO-ROUND.data`."""
    wait_for_port(port)
    load = ["taskset", "-c", "0", "h2load", "--h1", "-c", str(connections), f"http://127.0.0.1:{port}/item"]
    subprocess.run(load + ["-n", "2000"], check=True, stdout=subprocess.DEVNULL)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    for round in range(rounds):
        perf = None
        if perf_dir:
            os.makedirs(perf_dir, exist_ok=True)
            perf = subprocess.Popen(["perf", "record", "-F", "4000", "-p", str(pid), "-o",
                                     f"{perf_dir}/{who}-{round}.data"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        user0, system0 = user_system_ticks(pid)
        started = time.time()
        subprocess.run(load + ["-n", str(n)], check=True, stdout=subprocess.DEVNULL)
        elapsed = time.time() - started
        user1, system1 = user_system_ticks(pid)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        user, system = (user1 - user0) * tick_us / n, (system1 - system0) * tick_us / n
        print(f"{who} round {round}: {n / elapsed:.0f} requests/s, CPU {user + system:.1f} µs per "
              f"request: user {user:.1f}, kernel {system:.1f}")
