"""A backend for the proxy's tests, on 127.0.0.1:$PORT (under `pb exec`).

    /          200, JSON: this server's name (argv[1]), pid, path and the
               request's headers (what the proxy sent on)
    /sse       text/event-stream: three events 300 ms apart, each carrying
               the wall-clock time it was written (sent_ms), then the end
    /hang      never answers
    /cut       promises 1000 bytes, sends 10, closes the connection
    /echo      POST: answers the body's length and sha256, read as it comes
"""
import hashlib
import http.server
import json
import os
import socket
import sys
import time

NAME = sys.argv[1] if len(sys.argv) > 1 else "backend"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b": open\n\n")
            self.wfile.flush()
            for i in range(3):
                time.sleep(0.3)
                data = json.dumps({"n": i, "sent_ms": time.time() * 1000})
                self.wfile.write(f"id: {i}\ndata: {data}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/hang":
            time.sleep(3600)
            return
        if self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.send_json(200, {
            "server": NAME,
            "pid": os.getpid(),
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        })

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        h = hashlib.sha256()
        left = n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        self.send_json(200, {"server": NAME, "length": n - left, "sha256": h.hexdigest()})


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.daemon_threads = True
print(f"{NAME} serving on {server.server_address[1]}", flush=True)
server.serve_forever()
