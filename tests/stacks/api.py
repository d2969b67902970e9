"""A small HTTP API for `pb up`'s tests. It serves $PORT (binding it
itself: the shim gives it the listener pb holds), says which sibling
ports were already listening when it started, can wait for a file before
it accepts anything (API_WAIT_FOR), and finishes the request in hand on
SIGTERM before it exits, as real servers do."""

import http.server
import json
import os
import signal
import socket
import sys
import time

port = int(os.environ["PORT"])
open_before = {}
for k, v in sorted(os.environ.items()):
    if k.endswith("_PORT") and k != "PORT" and not k.startswith("PB_"):
        try:
            socket.create_connection(("127.0.0.1", int(v)), timeout=2).close()
            open_before[k] = True
        except OSError:
            open_before[k] = False
print("api-start " + json.dumps({"pid": os.getpid(), "port": port, "open": open_before}), flush=True)

wait_for = os.environ.get("API_WAIT_FOR")
if wait_for:
    deadline = time.time() + 30
    while not os.path.exists(wait_for) and time.time() < deadline:
        time.sleep(0.02)

stopping = False


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        body = ("api %d %s" % (os.getpid(), self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        print("api-served " + self.path, flush=True)


server = http.server.HTTPServer(("127.0.0.1", port), Handler)
server.timeout = 0.05
print("api-listening", flush=True)
while not stopping:
    server.handle_request()
print("api-stopped", flush=True)
