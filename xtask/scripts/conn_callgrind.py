"""User-space instructions and system calls per new connection (one HTTP/1.1 request with
`Connection: close` each), gatewayd against nginx: the per-connection profile issue 15
asks for, counted repeatably whatever else the machine is doing.

Usage: python3 conn_callgrind.py GATEWAYD N [nginx] [--strace] [--cache-sim] [--dump-dir DIR]
The proxy (gatewayd: one worker, access log off; or with `nginx`, one nginx worker
process, `proxy_http_version 1.1` and an upstream keepalive pool) in front of an nginx
answering a fixed 200 over kept-alive upstream connections, as `h1_callgrind.py` sets
them up. A client opens N connections one after the other, each sending one request with
`Connection: close` and reading the answer to the end. 200 connections warm up first.
Default: under `valgrind --tool=callgrind`, every instruction of the process (all threads)
between `callgrind_control -z` and `-d`, divided by N. With `--strace`: the proxy runs
natively and `strace -c -f` counts its system calls over the N connections. With
`--cache-sim`: also the simulated cache misses and mispredicted branches per connection (as
`h1_callgrind.py --cache-sim`). With `--dump-dir DIR`: the callgrind dump is kept there (as
`callgrind.gatewayd` or `callgrind.nginx`) for `callgrind_events.py` and `callgrind_annotate`.
"""
import os, shutil, socket, subprocess, sys

from callgrind_run import (callgrind_options, PORT_OFFSET, count_instructions, count_syscalls, print_cache_sim,
                           print_syscalls, wait_for_port)
from one_route_config import one_route_config

args = sys.argv[1:]
DUMP_DIR = None
if "--dump-dir" in args:
    at = args.index("--dump-dir")
    DUMP_DIR = args[at + 1]
    del args[at:at + 2]
args = [a for a in args if not a.startswith("--")]
STRACE = "--strace" in sys.argv
CACHE_SIM = "--cache-sim" in sys.argv
BIN, N = args[0], int(args[1])
PEER = len(args) > 2 and args[2] == "nginx"
UP, GW = 18490 + PORT_OFFSET, 18590 + PORT_OFFSET
WORK = f"/tmp/conncg-{os.getpid()}"
os.makedirs(WORK, exist_ok=True)

open(f"{WORK}/up.conf", "w").write(f"""daemon off; master_process off; worker_processes 1; pid {WORK}/up.pid;
error_log {WORK}/up.err; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UP}; location / {{ return 200 "upstream\\n"; }} }} }}
""")
open(f"{WORK}/gw.yaml", "w").write(one_route_config(GW, UP))
open(f"{WORK}/gw.conf", "w").write(f"""daemon off; master_process off; worker_processes 1; pid {WORK}/gw.pid;
error_log {WORK}/gw.err; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{UP}; keepalive 64; }}
  server {{ listen 127.0.0.1:{GW};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")

if PEER:
    command = ["nginx", "-c", f"{WORK}/gw.conf", "-p", WORK]
else:
    command = [BIN, "run", "--config", f"{WORK}/gw.yaml", "--ebpf", "off", "--worker-threads", "1",
               "--access-log", "off",
               "--readiness-addr", f"127.0.0.1:{GW+200}", "--metrics-addr", f"127.0.0.1:{GW+300}",
               "--admin-addr", f"127.0.0.1:{GW+400}"]

REQUEST = b"GET /item HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"


def load(n):
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", GW)) as s:
            s.sendall(REQUEST)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer: {answer[:80]!r}")


who = "nginx" if PEER else "gatewayd"
up = subprocess.Popen(["nginx", "-c", f"{WORK}/up.conf", "-p", WORK], stderr=subprocess.DEVNULL)
try:
    if STRACE:
        gw = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_for_port(GW)
        load(200)
        calls = count_syscalls(gw.pid, load, N, WORK)
        gw.kill()
        print_syscalls(who, calls, N, "connection", 0.1)
    else:
        out = f"{WORK}/callgrind.out"
        simulate = callgrind_options(CACHE_SIM)
        gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + simulate
                              + command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        total, dump = count_instructions(gw.pid, GW, out, load, N, warm_up=200)
        gw.kill()
        if DUMP_DIR:
            os.makedirs(DUMP_DIR, exist_ok=True)
            shutil.copy(dump, os.path.join(DUMP_DIR, "callgrind.nginx" if PEER else "callgrind.gatewayd"))
        print(f"{who}: {N} connections, {total} instructions, {total / N:.0f} per connection ({dump})")
        if CACHE_SIM:
            print_cache_sim(dump, N, "connection")
finally:
    up.kill()
