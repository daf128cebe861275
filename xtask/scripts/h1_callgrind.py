"""User-space instructions per proxied HTTP/1.1 keep-alive request, counted by callgrind.

Usage: python3 h1_callgrind.py GATEWAYD hyper|own N [nginx] [--dump-dir DIR] [--strace]
                                  [--cpu ROUNDS [--perf-record DIR]] [--cache-sim]
                                  [--connections C]
gatewayd (one worker, access log off) under `valgrind --tool=callgrind`, in front of an
nginx answering a fixed 200 over kept-alive upstream connections (`--http1-client` MODE);
1000 requests to warm up, the counters zeroed (`callgrind_control -z`), N requests by
`h2load --h1 -c4` over keep-alive connections, the counters dumped (`callgrind_control
-d`): every instruction of the process (all threads) between the two, divided by N.
With `nginx` as the last argument, the same for an nginx proxy (one worker process,
`proxy_http_version 1.1` and an upstream keepalive pool) instead of gatewayd.
With `--strace`: the proxy runs natively and `strace -c -f` counts its system calls over
the N requests (the kernel's share of a request is mostly these calls).
With `--dump-dir DIR`: the callgrind dump is kept there (as `callgrind.gatewayd` or
`callgrind.nginx`) for `callgrind_annotate`.
With `--cpu ROUNDS`: the proxy runs natively on CPU 1, the upstream and the load on CPU 0,
the load is `h2load --h1 -c16 -nN`, and each round prints the proxy's user and kernel CPU
time per request; `--perf-record DIR` also samples each round with `perf record`.
With `--cache-sim`: callgrind also simulates the caches and the branch predictor
(`--cache-sim=yes --branch-sim=yes`) and prints, per request, the first-level and
last-level data misses and the mispredicted branches: what instructions alone do not show
when CPU time and instruction counts disagree (`perf stat` has no counters on this machine).
`--connections C` sets h2load's connections for the measured load (default 4; `cargo xtask
bench http` holds 50).
"""
import os, shutil, subprocess, sys

from callgrind_run import (callgrind_options, PORT_OFFSET, count_instructions, count_syscalls, cpu_rounds,
                           print_cache_sim, print_syscalls, wait_for_port)
from one_route_config import one_route_config

args = sys.argv[1:]
CPU_ROUNDS, PERF_DIR, DUMP_DIR = 0, None, None
CONNECTIONS = 4
for option in ("--cpu", "--perf-record", "--dump-dir", "--connections"):
    if option in args:
        at = args.index(option)
        value = args[at + 1]
        del args[at:at + 2]
        if option == "--cpu":
            CPU_ROUNDS = int(value)
        elif option == "--perf-record":
            PERF_DIR = value
        elif option == "--connections":
            CONNECTIONS = int(value)
        else:
            DUMP_DIR = value
args = [a for a in args if not a.startswith("--")]
STRACE = "--strace" in sys.argv
CACHE_SIM = "--cache-sim" in sys.argv
BIN, MODE, N = args[0], args[1], int(args[2])
PEER = len(args) > 3 and args[3] == "nginx"
UP, GW = 18480 + PORT_OFFSET, 18580 + PORT_OFFSET
WORK = f"/tmp/h1cg-{os.getpid()}"
os.makedirs(WORK, exist_ok=True)

upstream_conf = f"""daemon off; master_process off; worker_processes 1; pid {WORK}/up.pid;
error_log {WORK}/up.err; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UP}; location / {{ return 200 "upstream\\n"; }} }} }}
"""
open(f"{WORK}/up.conf", "w").write(upstream_conf)

config = one_route_config(GW, UP)
open(f"{WORK}/gw.yaml", "w").write(config)

nginx_proxy = f"""daemon off; master_process off; worker_processes 1; pid {WORK}/gw.pid;
error_log {WORK}/gw.err; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{UP}; keepalive 64; }}
  server {{ listen 127.0.0.1:{GW};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""
open(f"{WORK}/gw.conf", "w").write(nginx_proxy)

up = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{WORK}/up.conf", "-p", WORK],
                      stderr=subprocess.DEVNULL)
out = f"{WORK}/callgrind.out"
if PEER:
    command = ["nginx", "-c", f"{WORK}/gw.conf", "-p", WORK]
else:
    command = [BIN, "run", "--config", f"{WORK}/gw.yaml", "--ebpf", "off", "--worker-threads", "1",
               "--access-log", "off", "--http1-client", MODE,
               "--readiness-addr", f"127.0.0.1:{GW+200}", "--metrics-addr", f"127.0.0.1:{GW+300}",
               "--admin-addr", f"127.0.0.1:{GW+400}"]


def load(n):
    subprocess.run(["h2load", "--h1", "-n", str(n), "-c", str(CONNECTIONS), f"http://127.0.0.1:{GW}/item"],
                   check=True, stdout=subprocess.DEVNULL)


who = "nginx" if PEER else f"gatewayd --http1-client {MODE}"
try:
    if CPU_ROUNDS:
        gw = subprocess.Popen(["taskset", "-c", "1"] + command, stderr=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)
        cpu_rounds(gw.pid, GW, N, CPU_ROUNDS, PERF_DIR, "nginx" if PEER else "gatewayd")
    elif STRACE:
        gw = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_for_port(GW)
        load(1000)
        print_syscalls(who, count_syscalls(gw.pid, load, N, WORK), N, "request", 0.01)
    else:
        simulate = callgrind_options(CACHE_SIM)
        gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + simulate
                              + command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        total, dump = count_instructions(gw.pid, GW, out, load, N)
        if DUMP_DIR:
            os.makedirs(DUMP_DIR, exist_ok=True)
            shutil.copy(dump, os.path.join(DUMP_DIR, "callgrind.nginx" if PEER else "callgrind.gatewayd"))
        print(f"{who}: {N} requests, {total} instructions, {total / N:.0f} per request")
        if CACHE_SIM:
            print_cache_sim(dump, N, "request")
finally:
    gw.kill()
    up.kill()
