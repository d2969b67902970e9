"""One load process: COUNT threads, released together, each claiming one id
over its own connection. Odd-numbered claims also take the listening sockets
and check them. Prints a JSON list of [id, port, number_of_fds]."""

import json
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from pb_client import PbClient  # noqa: E402

path, proc, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = threading.Barrier(count)
results = [None] * count
errors = []


def worker(i):
    ident = f"load{proc}:w{i}"
    try:
        c = PbClient(path)
        start.wait(timeout=30)
        want_fds = i % 2 == 1
        res, fds = c.call("claim", id=ident, fds=want_fds)
        port = res["lease"]["port"]
        for fd in fds:
            s = socket.socket(fileno=fd)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1, "not listening"
            assert s.getsockname()[1] == port, "wrong port"
            s.close()
        results[i] = [ident, port, len(fds)]
        c.close()
    except Exception as e:  # reported below, failing the run
        errors.append(f"{ident}: {e!r}")


threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=120)
if errors or any(r is None for r in results):
    print("\n".join(errors) or "a worker did not finish", file=sys.stderr)
    sys.exit(1)
print(json.dumps(results))
