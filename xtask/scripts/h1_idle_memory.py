"""RSS growth of gatewayd per idle keep-alive connection (one request each), by HTTP/1 server.

Usage: python3 h1_idle_memory.py GATEWAYD DEMO_UPSTREAM hyper|own N [tls]   (ulimit -n > N + 100)
One worker, 20 warm-up connections, then N connections each sending one GET and reading
its answer's head, then 2 s of quiet; prints the VmRSS growth divided by N. With `tls`
the port is HTTPS (a self-signed P-256 certificate made with openssl, SIMPLE mode) and the
clients are Python's ssl module (TLS 1.3, X25519), as `cargo xtask bench tls` holds them.
"""
import os, socket, ssl, subprocess, sys, time

from one_route_config import one_route_config

BIN, UPSTREAM_BIN, MODE, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
TLS = len(sys.argv) > 5 and sys.argv[5] == "tls"
UP, GW = 18080 + (MODE == "own"), 18180 + (MODE == "own")
config = one_route_config(GW, UP)
if TLS:
    d = "/tmp/h1-idle-tls"
    os.makedirs(d, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "1",
                    "-subj", "/CN=a.example", "-addext", "subjectAltName=DNS:a.example"],
                   check=True, capture_output=True)
    indent = lambda path: "".join("    " + l for l in open(path).readlines())
    config = config.replace("protocol: HTTP}\n    hosts: [\"*\"]",
                            "protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: idle-cred}")
    assert "idle-cred" in config
    config += ("---\napiVersion: v1\nkind: Secret\nmetadata: {name: idle-cred, namespace: istio-system}\n"
               "type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n" + indent(f"{d}/cert.pem")
               + "  tls.key: |\n" + indent(f"{d}/key.pem"))
open(f"/tmp/{MODE}.yaml", "w").write(config)
up = subprocess.Popen([UPSTREAM_BIN, "--listen", f"127.0.0.1:{UP}", "--name", "up"], stderr=subprocess.DEVNULL)
gw = subprocess.Popen([BIN, "run", "--config", f"/tmp/{MODE}.yaml", "--ebpf", "off",
                       "--worker-threads", "1", "--http1-server", MODE,
                       "--readiness-addr", f"127.0.0.1:{GW+200}", "--metrics-addr", f"127.0.0.1:{GW+300}",
                       "--admin-addr", f"127.0.0.1:{GW+400}"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
ctx = None
if TLS:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.set_ecdh_curve("X25519")
try:
    time.sleep(2)
    def rss():
        for line in open(f"/proc/{gw.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    def connect():
        s = socket.create_connection(("127.0.0.1", GW))
        return ctx.wrap_socket(s, server_hostname="a.example") if ctx else s
    def one(sock):
        sock.sendall(b"GET /status/200 HTTP/1.1\r\nHost: a.example\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
    warm = [connect() for _ in range(20)]
    for s in warm: one(s)
    time.sleep(1)
    before = rss()
    conns = []
    for _ in range(N):
        s = connect(); one(s); conns.append(s)
    time.sleep(2)
    after = rss()
    kind = "TLS " if TLS else ""
    print(f"{MODE}: {N} idle {kind}connections, RSS {before} -> {after} KiB, {(after-before)/N:.2f} KiB per connection")
finally:
    gw.kill(); up.kill()
