"""A server with several listeners on hard-coded ports, each answering with
its own name; it knows nothing of pb. Usage: listeners.py NAME=PORT ..."""
import http.server
import sys
import threading


def serve(name, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{name} port={self.server.server_address[1]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"{name} listening on {srv.server_address[1]}", flush=True)
    srv.serve_forever()


threads = []
for spec in sys.argv[1:]:
    name, port = spec.split("=")
    t = threading.Thread(target=serve, args=(name, int(port)), daemon=True)
    t.start()
    threads.append(t)
for t in threads:
    t.join()
