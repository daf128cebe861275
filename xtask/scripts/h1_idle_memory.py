"""RSS growth of gatewayd per idle keep-alive connection (one request each), by HTTP/1 server.

Usage: python3 h1_idle_memory.py GATEWAYD DEMO_UPSTREAM hyper|own N   (ulimit -n > N + 100)
One worker, 20 warm-up connections, then N connections each sending one GET and reading
its answer's head, then 2 s of quiet; prints the VmRSS growth divided by N.
"""
import os, socket, subprocess, sys, time

from one_route_config import one_route_config

BIN, UPSTREAM_BIN, MODE, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
UP, GW = 18080 + (MODE == "own"), 18180 + (MODE == "own")
config = one_route_config(GW, UP)
open(f"/tmp/{MODE}.yaml", "w").write(config)
up = subprocess.Popen([UPSTREAM_BIN, "--listen", f"127.0.0.1:{UP}", "--name", "up"], stderr=subprocess.DEVNULL)
gw = subprocess.Popen([BIN, "run", "--config", f"/tmp/{MODE}.yaml", "--ebpf", "off",
                       "--worker-threads", "1", "--http1-server", MODE,
                       "--readiness-addr", f"127.0.0.1:{GW+200}", "--metrics-addr", f"127.0.0.1:{GW+300}",
                       "--admin-addr", f"127.0.0.1:{GW+400}"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
try:
    time.sleep(2)
    def rss():
        for line in open(f"/proc/{gw.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    def one(sock):
        sock.sendall(b"GET /status/200 HTTP/1.1\r\nHost: a.example\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
    warm = [socket.create_connection(("127.0.0.1", GW)) for _ in range(20)]
    for s in warm: one(s)
    time.sleep(1)
    before = rss()
    conns = []
    for _ in range(N):
        s = socket.create_connection(("127.0.0.1", GW)); one(s); conns.append(s)
    time.sleep(2)
    after = rss()
    print(f"{MODE}: {N} idle connections, RSS {before} -> {after} KiB, {(after-before)/N:.2f} KiB per connection")
finally:
    gw.kill(); up.kill()
