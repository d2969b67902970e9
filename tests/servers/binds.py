"""Binds TCP sockets as told and prints what each got, one JSON line per
bind, then waits for stdin to close.
Usage: binds.py [--after FILE] ADDR:PORT ...
(ADDR '::' or '0.0.0.0' and so on; a failed bind prints its error). A spec
written probe:ADDR:PORT is bound and closed again at once, as a dev server
checks that a port is free before it binds it for real. With --after, it
first waits (at most 20 s) until FILE exists."""
import json
import os
import socket
import sys
import time

args = sys.argv[1:]
if args[:1] == ["--after"]:
    flag, args = args[1], args[2:]
    for _ in range(2000):
        if os.path.exists(flag):
            break
        time.sleep(0.01)

held = []
for spec in args:
    probe = spec.startswith("probe:")
    host, port = spec.removeprefix("probe:").rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, int(port)))
        s.listen(8)
        print(json.dumps({"asked": spec, "got": s.getsockname()[1]}), flush=True)
        if probe:
            s.close()
        else:
            held.append(s)
    except OSError as e:
        print(json.dumps({"asked": spec, "error": str(e)}), flush=True)
sys.stdin.read()
