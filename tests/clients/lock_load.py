"""One of the processes of the lock contention test.

Usage: lock_load.py SOCKET LOCK CYCLES COUNTER_FILE

Waits for a line on stdin (so all processes start together), then CYCLES
times: acquires LOCK with wait (owner: this process), increments the
integer in COUNTER_FILE with a plain read-then-write (a lost update if two
processes ever held the lock at once), releases. Prints one JSON line per
cycle: the token, and CLOCK_MONOTONIC just after the grant and just before
the release.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pb_client import PbClient  # noqa: E402

sock, name, cycles, counter = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
client = PbClient(sock)
sys.stdin.readline()
records = []
for _ in range(cycles):
    reply, _ = client.call("lock_acquire", name=name, wait_ms=120000)
    acquired = time.monotonic_ns()
    with open(counter) as f:
        n = int(f.read() or "0")
    with open(counter, "w") as f:
        f.write(str(n + 1))
    released = time.monotonic_ns()
    client.call("lock_release", name=name)
    records.append({"token": reply["lock"]["token"], "pid": os.getpid(),
                    "acquired": acquired, "released": released,
                    "waited_ms": reply["waited_ms"]})
for r in records:
    print(json.dumps(r))
