#!/usr/bin/env python3
"""Where a proxied request's time goes inside the proxy, from its worker's system calls.

    python3 xtask/scripts/proxy_legs.py PID LISTEN_PORT [--seconds 2]

Run it while a load with kept-alive connections (paced-load) goes through the proxy PID
(gatewayd or nginx, one worker) listening on LISTEN_PORT. It records the busiest thread's
system calls with `perf record -e raw_syscalls:*` and splits each request into:

- residence: the client's request read -> the response written to the client;
- the upstream's round trip: the request written upstream -> the response read;
- leg 1: the client's request read -> the request written upstream (the proxy's work);
- leg 2: the upstream's response read -> the response written (the proxy's work);
- wake-up to read: an `epoll_wait` returning -> the next read (the event loop's dispatch);
- write to wait: a write to the client -> the next `epoll_wait` (the work after answering);
- each system call's mean duration and bytes, per request.

A socket is the client's when its local port is LISTEN_PORT (from /proc/net/tcp), the
upstream's otherwise. Legs pair a read with the next write of the other side, which is
exact one request at a time and close enough at light load; tracing adds a few µs to
every system call, the same for every proxy.
"""
import argparse
import collections
import os
import re
import statistics
import subprocess
import tempfile
import time

READS = {0, 17, 19, 45}  # read, pread64, readv, recvfrom
WRITES = {1, 18, 20, 44}  # write, pwrite64, writev, sendto
WAITS = {232, 281}  # epoll_wait, epoll_pwait


def busiest_thread(pid):
    def on_cpu():
        out = {}
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                out[int(task)] = int(f.read().split()[0])
        return out

    before = on_cpu()
    time.sleep(0.3)
    after = on_cpu()
    return max(after, key=lambda t: after[t] - before.get(t, 0))


def client_fds(pid, listen_port):
    """The fds of sockets whose local port is the listener's: the clients'."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == listen_port:
                    inodes.add(fields[9])
    fds = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m and m.group(1) in inodes:
            fds.add(int(fd))
    return fds


def record(tid, seconds):
    data = tempfile.mktemp(suffix=".perf")
    subprocess.run(
        ["perf", "record", "-q", "-o", data, "-e", "raw_syscalls:sys_enter,raw_syscalls:sys_exit",
         "-t", str(tid), "--", "sleep", str(seconds)],
        check=True, stderr=subprocess.DEVNULL)
    out = subprocess.run(["perf", "script", "-i", data, "-F", "time,event,trace"],
                         check=True, capture_output=True, text=True).stdout
    os.unlink(data)
    return out


def calls_of(script):
    """(start µs, end µs, number, fd, return) per completed system call."""
    calls, entered = [], None
    for line in script.splitlines():
        m = re.match(r"\s*([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+) (.*)", line)
        if not m:
            continue
        t, kind, nr = float(m.group(1)) * 1e6, m.group(2), int(m.group(3))
        if kind == "enter":
            entered = (t, nr, int(m.group(4).strip("()").split(",")[0], 16))
        elif entered and entered[1] == nr:
            calls.append((entered[0], t, nr, entered[2], int(m.group(4).split("=")[1])))
            entered = None
    return calls


def quantiles(values):
    v = sorted(values)
    return f"p50 {v[len(v) // 2]:.0f}  p90 {v[int(len(v) * 0.9)]:.0f}  mean {statistics.mean(v):.1f} µs"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pid", type=int)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("--seconds", type=float, default=2)
    args = parser.parse_args()

    tid = busiest_thread(args.pid)
    clients = client_fds(args.pid, args.listen_port)
    calls = calls_of(record(tid, args.seconds))

    read_at, written_up_at = {}, {}
    residence, round_trip, leg1, leg2 = [], [], [], []
    last_client_read = last_upstream_read = None
    for start, end, nr, fd, ret in calls:
        client = fd in clients
        if nr in READS and ret > 0 and client:
            read_at[fd] = last_client_read = end
        elif nr in WRITES and not client:
            written_up_at[fd] = start
            if last_client_read is not None:
                leg1.append(start - last_client_read)
                last_client_read = None
        elif nr in READS and ret > 0 and not client:
            if fd in written_up_at:
                round_trip.append(end - written_up_at.pop(fd))
            last_upstream_read = end
        elif nr in WRITES and client:
            if fd in read_at:
                residence.append(start - read_at.pop(fd))
            if last_upstream_read is not None:
                leg2.append(start - last_upstream_read)
                last_upstream_read = None
    dispatch, after_answer = [], []
    for previous, following in zip(calls, calls[1:]):
        if previous[2] in WAITS and following[2] in READS:
            dispatch.append(following[0] - previous[1])
        if previous[2] in WRITES and previous[3] in clients and following[2] in WAITS:
            after_answer.append(following[0] - previous[1])
    requests = len(residence)
    if not requests:
        raise SystemExit("no request seen: is a load running, and is LISTEN_PORT the proxy's?")

    print(f"thread {tid}: {requests} requests in {args.seconds} s")
    print(f"residence              {quantiles(residence)}")
    print(f"upstream's round trip  {quantiles(round_trip)}")
    print(f"leg 1 (read -> upstream write)  {quantiles(leg1)}")
    print(f"leg 2 (upstream read -> write)  {quantiles(leg2)}")
    print(f"wake-up to read                 {quantiles(dispatch)}")
    print(f"client write to wait            {quantiles(after_answer)}")
    groups = collections.defaultdict(list)
    for start, end, nr, fd, ret in calls:
        side = "client" if fd in clients else "upstream"
        name = ("read " + side if nr in READS else "write " + side if nr in WRITES
                else "epoll_wait" if nr in WAITS else "other")
        groups[name].append((end - start, ret))
    for name, v in sorted(groups.items()):
        size = statistics.median(r for _, r in v) if name.startswith(("read", "write")) else None
        print(f"{name:16} {len(v) / requests:5.2f} per request, {statistics.mean(d for d, _ in v):5.1f} µs each"
              + (f", {size:.0f} B" if size is not None else ""))
    total = sum(end - start for start, end, nr, _, _ in calls if nr not in WAITS)
    print(f"system calls other than waits: {total / requests:.1f} µs per request")


if __name__ == "__main__":
    main()
