"""An HTTP server that serves only on the sockets it inherits through the
systemd LISTEN_FDS protocol; it never binds anything itself."""

import http.server
import os
import socket
import threading

assert os.environ.get("LISTEN_PID") == str(os.getpid()), "LISTEN_PID is not our pid"
n = int(os.environ["LISTEN_FDS"])
first = int(os.environ.get("LISTEN_FDS_FIRST_FD", "3"))


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        family = "ipv6" if self.connection.family == socket.AF_INET6 else "ipv4"
        body = f"python {family} port={os.environ['PORT']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


servers = []
for fd in range(first, first + n):
    sock = socket.socket(fileno=fd)
    srv = http.server.HTTPServer(sock.getsockname()[:2], Hello, bind_and_activate=False)
    srv.socket = sock
    srv.address_family = sock.family
    servers.append(srv)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
print("serving", flush=True)
threading.Event().wait()
