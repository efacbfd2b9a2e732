#!/usr/bin/env python3
"""The listener under idle connections: memory per idle connection, and how many it holds.

Usage: benches/listener_flood.py target/release/rearguard [N]
Loopback only, bounded: each run starts `rearguard run` (one target probed every second)
under the shipped unit's LimitNOFILE (8192, soft and hard), waits for /healthz, reads its
RSS, opens N idle connections that send nothing, waits until the daemon's descriptor count
settles, reads its RSS again and counts its open sockets, asks /healthz once more on a new
connection, then stops it. Five runs per case; medians.

Cases: `memory` (max_connections = 4 N, so that all N may wait: the cost of one idle
connection), `default` (max_connections 256: 64 may wait) and `most` (the largest
max_connections whose descriptors fit 8192: 64 + c + 8 x 2 <= 8192).
"""
import os, resource, socket, statistics, subprocess, sys, tempfile, time, http.server, threading
import urllib.request

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
UNIT_NOFILE = 8192
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def sockets(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count

def healthz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False

def settle(pid, before):
    """Waits until the daemon's socket count stops changing for half a second."""
    last, since = sockets(pid), time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sockets(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 0.5:
            break
    return last - before

def run(max_connections, idle):
    tmp = tempfile.TemporaryDirectory()
    port = free_port()
    cfg = os.path.join(tmp.name, "rearguard.toml")
    with open(cfg, "w") as f:
        f.write(f'[daemon]\nstate_dir = "{tmp.name}/state"\nlisten = "127.0.0.1:{port}"\n'
                f'max_connections = {max_connections}\nheader_read_timeout = "120s"\n'
                f'[[target]]\nname = "t"\n[[signal]]\nname = "h"\ntarget = "t"\ntype = "http_probe"\n'
                f'url = "http://127.0.0.1:{srv.server_address[1]}/health"\ninterval = "1s"\n'
                f'[[rule]]\nname = "r"\nsignal = "h"\nconsecutive = 3\n')
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (UNIT_NOFILE, UNIT_NOFILE))
    p = subprocess.Popen([binary, "run", "--config", cfg], preexec_fn=limit,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not healthz(port):
            assert time.monotonic() < deadline, "no /healthz within 30s"
            time.sleep(0.1)
        time.sleep(1)
        base_rss, base_sockets = rss_kib(p.pid), sockets(p.pid)
        conns = []
        for _ in range(idle):
            s = socket.socket(); s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port)); conns.append(s)
            except OSError:
                s.close()
        held = settle(p.pid, base_sockets)
        rss = rss_kib(p.pid)
        answered = healthz(port)
        for s in conns:
            s.close()
        return rss - base_rss, held, answered
    finally:
        p.terminate(); p.wait(timeout=30); tmp.cleanup()

most = UNIT_NOFILE - 64 - 8 * 2
cases = [("memory", 4 * n, n), ("default", 256, n), ("most", most, UNIT_NOFILE)]
for name, max_connections, idle in cases:
    runs = [run(max_connections, idle) for _ in range(5)]
    grew = statistics.median(r[0] for r in runs)
    held = statistics.median(r[1] for r in runs)
    answered = sum(r[2] for r in runs)
    per = grew / held if held else float("nan")
    print(f"{name}: max_connections {max_connections}, {idle} idle connections opened: "
          f"held {held:.0f}, RSS +{grew:.0f} KiB ({per:.1f} KiB per held connection), "
          f"/healthz answered in {answered} of {len(runs)} runs")
