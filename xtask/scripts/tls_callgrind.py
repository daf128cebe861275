"""User-space instructions per proxied request when the proxy originates TLS to its
upstream (issue 17), counted by callgrind.

Usage: python3 tls_callgrind.py GATEWAYD N [nginx|plain] [--dump-dir DIR] [--strace]
                                 [--cpu ROUNDS [--perf-record DIR]]
gatewayd (one worker, access log off) under `valgrind --tool=callgrind`, in front of an
nginx answering a fixed 200 over TLS 1.3 (P-256 certificate signed by a CA gatewayd
verifies; DestinationRule `tls: {mode: SIMPLE, caCertificates, sni}`), upstream
connections kept alive; 1000 requests to warm up, the counters zeroed (`callgrind_control
-z`), N requests by `h2load --h1 -c4` over keep-alive connections, the counters dumped
(`callgrind_control -d`): every instruction of the process (all threads) between the
two, divided by N. `nginx` measures an nginx proxy instead (one worker process,
`proxy_pass https://`, `proxy_ssl_verify on`, `proxy_ssl_session_reuse on`, an upstream
keepalive pool), as `cargo xtask bench upstream-tls` configures it; `plain` measures
gatewayd to the same nginx in plaintext (the floor). The dump is kept in DIR for
`callgrind_annotate`. With `--strace`: the proxy runs natively and `strace -c -f` counts its
system calls over the N requests (the kernel's share that callgrind does not see).
With `--cpu ROUNDS`: the proxy runs natively on CPU 1, the upstream and the load on CPU 0
as `cargo xtask bench upstream-tls` places them, the load is `h2load --h1 -c16 -nN`, and
each round prints the proxy's user and kernel CPU time per request (utime and stime from
`/proc`); `--perf-record DIR` also samples each round with `perf record -F 4000` into DIR
(`perf report -i DIR/WHAT-ROUND.data --sort sym` compares where the kernel time goes).
"""
import os, shutil, subprocess, sys

from callgrind_run import (PORT_OFFSET, count_instructions, count_syscalls, cpu_rounds, print_syscalls,
                           wait_for_port)
from one_route_config import one_route_config

args = [a for a in sys.argv[1:] if a != "--strace"]
STRACE = "--strace" in sys.argv
CPU_ROUNDS, PERF_DIR = 0, None
for option in ("--cpu", "--perf-record"):
    if option in args:
        at = args.index(option)
        if option == "--cpu":
            CPU_ROUNDS = int(args[at + 1])
        else:
            PERF_DIR = args[at + 1]
        del args[at:at + 2]
DUMP_DIR = None
if "--dump-dir" in args:
    at = args.index("--dump-dir")
    DUMP_DIR = args[at + 1]
    del args[at:at + 2]
BIN, N = args[0], int(args[1])
WHAT = args[2] if len(args) > 2 else "gatewayd"
UP_TLS, UP_PLAIN, GW = (port + PORT_OFFSET for port in (18481, 18482, 18581))
NAME = "upstream.bench.internal"
WORK = f"/tmp/tlscg-{os.getpid()}"
os.makedirs(WORK, exist_ok=True)


def openssl(*a):
    subprocess.run(["openssl", *a], cwd=WORK, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
openssl("req", "-x509", *ec, "-days", "3", "-keyout", "ca.key", "-out", "ca.pem",
        "-subj", "/CN=bench upstream CA")
openssl("req", *ec, "-keyout", "upstream.key", "-out", "upstream.csr", "-subj", f"/CN={NAME}")
open(f"{WORK}/upstream.ext", "w").write(f"subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\n")
openssl("x509", "-req", "-in", "upstream.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3", "-extfile", "upstream.ext", "-out", "upstream.pem")

open(f"{WORK}/up.conf", "w").write(f"""daemon off; master_process off; worker_processes 1;
pid {WORK}/up.pid; error_log {WORK}/up.err; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UP_TLS} ssl; ssl_certificate {WORK}/upstream.pem;
    ssl_certificate_key {WORK}/upstream.key; ssl_session_cache shared:up:1m;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{UP_PLAIN}; location / {{ return 200 "ok\\n"; }} }} }}
""")

config = one_route_config(GW, UP_PLAIN if WHAT == "plain" else UP_TLS)
if WHAT != "plain":
    config += f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: up, namespace: default}}
spec:
  host: up
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {WORK}/ca.pem, sni: {NAME}}}
"""
open(f"{WORK}/gw.yaml", "w").write(config)

open(f"{WORK}/gw.conf", "w").write(f"""daemon off; master_process off; worker_processes 1;
pid {WORK}/gw.pid; error_log {WORK}/gw.err; events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{UP_TLS}; keepalive 64; }}
  server {{ listen 127.0.0.1:{GW};
    location / {{ proxy_pass https://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate {WORK}/ca.pem; proxy_ssl_name {NAME};
      proxy_ssl_server_name on; proxy_ssl_session_reuse on; }} }} }}
""")

up = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", f"{WORK}/up.conf", "-p", WORK],
                      stderr=subprocess.DEVNULL)
out = f"{WORK}/callgrind.out"
if WHAT == "nginx":
    command = ["nginx", "-c", f"{WORK}/gw.conf", "-p", WORK]
else:
    command = [BIN, "run", "--config", f"{WORK}/gw.yaml", "--ebpf", "off", "--worker-threads", "1",
               "--access-log", "off",
               "--readiness-addr", f"127.0.0.1:{GW+200}", "--metrics-addr", f"127.0.0.1:{GW+300}",
               "--admin-addr", f"127.0.0.1:{GW+400}"]
if CPU_ROUNDS:
    gw = subprocess.Popen(["taskset", "-c", "1"] + command, stderr=open(f"{WORK}/proxy.err", "w"),
                          stdout=subprocess.DEVNULL)
elif STRACE:
    gw = subprocess.Popen(command, stderr=open(f"{WORK}/proxy.err", "w"), stdout=subprocess.DEVNULL)
else:
    gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + command,
                          stderr=open(f"{WORK}/proxy.err", "w"), stdout=subprocess.DEVNULL)


def load(n):
    result = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", "4", f"http://127.0.0.1:{GW}/item"],
                            check=True, capture_output=True, text=True)
    if f"{n} succeeded" not in result.stdout or f"{n} 2xx" not in result.stdout:
        raise SystemExit(f"not every request answered 2xx:\n{result.stdout}")


try:
    if CPU_ROUNDS:
        cpu_rounds(gw.pid, GW, N, CPU_ROUNDS, PERF_DIR, WHAT)
        raise SystemExit(0)
    if STRACE:
        wait_for_port(GW)
        load(1000)
        print_syscalls(WHAT, count_syscalls(gw.pid, load, N, WORK), N, "request", 0.01)
        raise SystemExit(0)
    total, dump = count_instructions(gw.pid, GW, out, load, N)
    if DUMP_DIR:
        os.makedirs(DUMP_DIR, exist_ok=True)
        shutil.copy(dump, os.path.join(DUMP_DIR, f"callgrind.{WHAT}"))
    print(f"{WHAT}: {N} requests, {total} instructions, {total / N:.0f} per request")
finally:
    gw.kill()
    up.kill()
    shutil.rmtree(WORK, ignore_errors=True)
