"""A web server that never binds a port: it serves on the listening sockets
it inherits from `pb exec` (systemd's LISTEN_FDS protocol), one thread each.

    pb exec hello -- python3 examples/hello.py
"""

import http.server
import os
import socket
import threading


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from pid {os.getpid()} on port {os.environ['PORT']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


first = int(os.environ.get("LISTEN_FDS_FIRST_FD", "3"))
servers = []
for fd in range(first, first + int(os.environ["LISTEN_FDS"])):
    sock = socket.socket(fileno=fd)
    server = http.server.HTTPServer(sock.getsockname()[:2], Hello, bind_and_activate=False)
    server.socket = sock
    servers.append(server)
print(f"serving on http://localhost:{os.environ['PORT']} (Ctrl-C to stop)", flush=True)
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
try:
    servers[0].serve_forever()
except KeyboardInterrupt:
    pass
