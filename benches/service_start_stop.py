#!/usr/bin/env python3
"""Start-to-READY and SIGTERM-to-exit of `rearguard run`, N targets each probed every second.

Usage: benches/service_start_stop.py target/release/rearguard [N]
The process is started with NOTIFY_SOCKET pointing at a unix datagram socket this script
reads (as systemd would), runs 2 s after READY, then gets SIGTERM. Seven runs; medians.
"""
import os, socket, subprocess, sys, time, tempfile, statistics, signal, http.server, threading
binary = sys.argv[1]
targets = int(sys.argv[2]) if len(sys.argv) > 2 else 1

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
class Quiet(http.server.ThreadingHTTPServer):
    def handle_error(self, *a): pass
srv = Quiet(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
port = srv.server_address[1]

def config(d):
    parts = [f'[daemon]\nstate_dir = "{d}/state"\nlisten = "127.0.0.1:0"\n']
    for i in range(targets):
        parts.append(f'[[target]]\nname = "t{i}"\n[[signal]]\nname = "h{i}"\ntarget = "t{i}"\ntype = "http_probe"\nurl = "http://127.0.0.1:{port}/health"\ninterval = "1s"\n[[rule]]\nname = "r{i}"\nsignal = "h{i}"\nconsecutive = 3\n')
    return "\n".join(parts)

ready, stop = [], []
for run in range(7):
    tmp = tempfile.TemporaryDirectory()
    d = tmp.name
    open(f"{d}/c.toml", "w").write(config(d))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"{d}/notify.sock"); sock.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=f"{d}/notify.sock")
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "run", "--config", f"{d}/c.toml"], env=env, stderr=subprocess.DEVNULL)
    while True:
        msg = sock.recv(4096).decode()
        if "READY=1" in msg:
            ready.append(time.monotonic() - t0); break
    time.sleep(2)
    t1 = time.monotonic()
    p.send_signal(signal.SIGTERM); p.wait(timeout=30)
    stop.append(time.monotonic() - t1)
    sock.close()
    tmp.cleanup()
print(f"targets={targets} start->READY median {statistics.median(ready)*1000:.0f} ms (min {min(ready)*1000:.0f}, max {max(ready)*1000:.0f}); SIGTERM->exit median {statistics.median(stop)*1000:.0f} ms (min {min(stop)*1000:.0f}, max {max(stop)*1000:.0f})")
