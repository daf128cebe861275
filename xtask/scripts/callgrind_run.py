"""The measuring part both callgrind scripts share: wait for the proxy's port, warm it up,
zero callgrind's counters, run the measured load, dump, and read the dump's total."""

import glob
import os
import socket
import subprocess
import time


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
