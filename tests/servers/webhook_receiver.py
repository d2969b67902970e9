"""A webhook receiver for pb's tests, and an independent verifier of pb's
signatures (written from the two schemes' descriptions, sharing no code with
the broker).

serve PORT RECORD [--fail N] [--status CODE] [--delay SECS] [--retry-after SECS]
      [--cert PEM --key PEM]
    Listens on 127.0.0.1:PORT. Each POST is appended to RECORD as one JSON
    line: arrival and completion times, path, headers (lowercased), body and
    the status sent. The first N requests get 500 (--fail), every other one
    CODE (default 200); --delay sleeps before answering; --retry-after adds
    that header to failures; --cert and --key (PEM) serve https.
    RECORD.arrivals gets a line as each request
    arrives, before any delay.

verify SECRET RECORD INDEX [--tamper] [--age SECS] [--forge-timestamp]
    Checks request INDEX of RECORD: X-PortDaddy-Signature (hex HMAC-SHA256
    of the body, keyed by the secret as given) and the Standard Webhooks
    signature (base64 HMAC-SHA256 of "id.timestamp.body", keyed by the
    base64-decoded part of a whsec_ secret), with a 5-minute tolerance on
    webhook-timestamp. --tamper changes one byte of the body; --age judges
    the request as if SECS had passed; --forge-timestamp replaces the
    timestamp with the current time, or a second later than the original
    if that is the same (a replay with a fresh timestamp).
    Prints "ok" and exits 0, or prints why and exits 1.
"""

import base64
import hashlib
import hmac
import http.server
import json
import ssl
import sys
import threading
import time

TOLERANCE = 300


def serve(argv):
    port, record = int(argv[0]), argv[1]
    opts = {"--fail": 0, "--status": 200, "--delay": 0.0, "--retry-after": None,
            "--cert": None, "--key": None}
    i = 2
    while i < len(argv):
        opts[argv[i]] = argv[i + 1]
        i += 2
    fail, status = int(opts["--fail"]), int(opts["--status"])
    delay = float(opts["--delay"])
    lock = threading.Lock()
    count = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            arrival = time.time()
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            with lock:
                n = count[0]
                count[0] += 1
            code = 500 if n < fail else status
            with lock:
                with open(record + ".arrivals", "a") as f:
                    f.write(json.dumps({"arrival": arrival}) + "\n")
            if delay:
                time.sleep(delay)
            entry = {
                "arrival": arrival,
                "done": time.time(),
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
                "status": code,
            }
            with lock:
                with open(record, "a") as f:
                    f.write(json.dumps(entry) + "\n")
            self.send_response(code)
            if code >= 300 and opts["--retry-after"] is not None:
                self.send_header("Retry-After", opts["--retry-after"])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if opts["--cert"]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(opts["--cert"], opts["--key"])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


def verify(argv):
    secret, record, index = argv[0], argv[1], int(argv[2])
    flags = argv[3:]
    age = 0
    if "--age" in flags:
        age = float(flags[flags.index("--age") + 1])
    with open(record) as f:
        entry = json.loads(f.readlines()[index])
    h, body = entry["headers"], entry["body"].encode()
    if "--tamper" in flags:
        body = body.replace(b'"', b"'", 1)
    ts = h["webhook-timestamp"]
    if "--forge-timestamp" in flags:
        # A fresh timestamp, and never the original one (a replay within
        # the same second would otherwise not be a forgery at all).
        ts = str(max(int(time.time()), int(ts) + 1))
    problems = []
    want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, h["x-portdaddy-signature"]):
        problems.append("X-PortDaddy-Signature does not match")
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{h['webhook-id']}.{ts}.".encode() + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in h["webhook-signature"].split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(want, g) for g in given):
        problems.append("webhook-signature does not match")
    if abs(time.time() + age - int(ts)) > TOLERANCE:
        problems.append("webhook-timestamp is outside the 5-minute tolerance")
    if h["webhook-id"] != h["x-portdaddy-delivery"]:
        problems.append("webhook-id and X-PortDaddy-Delivery differ")
    print("; ".join(problems) if problems else "ok")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    {"serve": serve, "verify": verify}[sys.argv[1]](sys.argv[2:])
