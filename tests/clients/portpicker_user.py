"""A test that uses portpicker as test suites do: PORTSERVER_ADDRESS is set,
pick_unused_port() asks the portserver, and the test binds the port itself,
in both loopback families, without SO_REUSEADDR. Prints one JSON line, then
holds the sockets until killed (tests/tests/portserver.rs)."""

import json
import os
import socket
import sys
import time

import portpicker

port = portpicker.pick_unused_port()
out = {"pid": os.getpid(), "port": port}
try:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v4.bind(("127.0.0.1", port))
    v4.listen(16)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::1", port))
    v6.listen(16)
    out["bound"] = True
except OSError as e:
    out["bound"] = False
    out["error"] = str(e)
print(json.dumps(out), flush=True)
time.sleep(int(sys.argv[1]) if len(sys.argv) > 1 else 600)
