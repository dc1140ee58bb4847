#!/usr/bin/env python3
"""RSS of the service under two floods (issue #9, docs/PERFORMANCE.md):

1. 4,000 failed logins with 60 KB user names (the login tracker must stay
   bounded, whatever is sent);
2. 2,000 open event streams (small memory per connection), first with the
   caps raised to 2,000 to measure the cost of a stream, then with the
   default caps to show the rest are refused (429/503).

Starts its own Mosquitto (a free port) and `target/release/mizuban run` with
a one-site configuration; prints a table. Bounded: fixed counts, loopback only.

usage: cargo build --release && python3 benches/http_flood.py [BINARY] [--legacy]

--legacy: BINARY is a build from before the caps existed (no stream-cap
settings in its configuration; the default-caps phase is skipped), for the
before/after comparison.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
LEGACY = "--legacy" in sys.argv
BIN = ARGS[0] if ARGS else os.path.join(REPO, "target/release/mizuban")
TOKEN = "bench-viewer-token-000001"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def write_config(d, mqtt_port, http_port, streams, per_caller):
    with open(os.path.join(d, "sites.toml"), "w") as f:
        f.write('[[site]]\nid = "B01"\nkind = "dma"\nname = "B01"\narea = "bench"\nlat = 39.7\nlon = 140.1\n'
                'device = "AKT-DMA-001"\nprofile = "akita-dma-logger"\nattrs = { mean_flow = 100.0 }\n')
    pw_hash = subprocess.run([BIN, "hash-password"], input=b"right password\n", capture_output=True,
                             check=True).stdout.decode().strip()
    caps = "" if LEGACY else f"max_event_streams = {streams}\nmax_event_streams_per_caller = {per_caller}"
    with open(os.path.join(d, "mizuban.toml"), "w") as f:
        f.write(f"""[service]
name = "bench"
devices_dir = "{REPO}/devices"
sites_file = "sites.toml"
rules_file = "{REPO}/config/akita-rules.toml"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "mizuban-bench-flood"

[store]
path = "data/bench.db"

[http]
listen = "127.0.0.1:{http_port}"
{caps}

[[token]]
name = "bench"
token = "{TOKEN}"
role = "viewer"

[[user]]
name = "operator"
password_hash = "{pw_hash}"
role = "operator"
""")


def start(d, http_port):
    p = subprocess.Popen([BIN, "run", "--config", os.path.join(d, "mizuban.toml")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "error"})
    end = time.time() + 30
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
            c.request("GET", "/api/v1/health")
            if c.getresponse().status == 200:
                return p
        except OSError:
            pass
        time.sleep(0.1)
    p.kill()
    raise SystemExit("service did not come up")


def login_flood(http_port, n=4000, name_len=60_000):
    def one(i):
        body = json.dumps({"user": f"{i:06d}" + "x" * (name_len - 6), "password": "guess"})
        c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        c.request("POST", "/api/v1/login", body, {"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    with ThreadPoolExecutor(32) as ex:
        codes = list(ex.map(one, range(n)))
    return {c: codes.count(c) for c in set(codes)}


def open_streams(http_port, n):
    socks, codes = [], {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", http_port))
        s.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        head = s.recv(4096).decode(errors="replace")
        code = int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0
        codes[code] = codes.get(code, 0) + 1
        socks.append(s)
    return socks, codes


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: cargo build --release")
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    rows = []
    with tempfile.TemporaryDirectory() as d:
        mport, hport = free_port(), free_port()
        with open(os.path.join(d, "m.conf"), "w") as f:
            f.write(f"listener {mport} 127.0.0.1\nallow_anonymous true\nuser root\n")
        broker = subprocess.Popen([mosq, "-c", os.path.join(d, "m.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_port(mport)
        try:
            # 1. Login flood, and 2a. streams with the caps raised.
            write_config(d, mport, hport, 2500, 2500)
            svc = start(d, hport)
            time.sleep(1)
            base = rss_mib(svc.pid)
            t = time.time()
            codes = login_flood(hport)
            rows.append(("4,000 failed logins, 60 KB names", f"{base:.0f}", f"{rss_mib(svc.pid):.0f}",
                         f"answers {codes} in {time.time() - t:.1f} s"))
            before = rss_mib(svc.pid)
            t = time.time()
            codes = login_flood(hport, 4000, 200)
            rows.append(("4,000 failed logins, distinct 200-byte names", f"{before:.0f}", f"{rss_mib(svc.pid):.0f}",
                         f"answers {codes} in {time.time() - t:.1f} s"))
            # From another client address: the flood's own client is slowed.
            c = http.client.HTTPConnection("127.0.0.1", hport, timeout=30, source_address=("127.0.0.2", 0))
            c.request("POST", "/api/v1/login", json.dumps({"user": "operator", "password": "right password"}),
                      {"content-type": "application/json"})
            ok = c.getresponse().status
            rows.append(("the real operator, from another client, right after", "", "", f"HTTP {ok}"))
            before = rss_mib(svc.pid)
            socks, codes = open_streams(hport, 2000)
            time.sleep(1)
            after = rss_mib(svc.pid)
            rows.append(("2,000 event streams (caps raised to 2,500)", f"{before:.0f}", f"{after:.0f}",
                         f"answers {codes}; {(after - before) * 1024 / 2000:.0f} KiB per stream"))
            for s in socks:
                s.close()
            svc.terminate()
            svc.wait(20)
            if LEGACY:
                raise StopIteration
            # 2b. The default caps.
            write_config(d, mport, hport, 512, 16)
            svc = start(d, hport)
            time.sleep(1)
            before = rss_mib(svc.pid)
            socks, codes = open_streams(hport, 2000)
            time.sleep(1)
            rows.append(("2,000 event streams from one token (default caps)", f"{before:.0f}",
                         f"{rss_mib(svc.pid):.0f}", f"answers {codes}"))
            for s in socks:
                s.close()
            svc.terminate()
            svc.wait(20)
        except StopIteration:
            pass
        finally:
            broker.kill()
    print("| flood | RSS before (MiB) | RSS after (MiB) | |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
