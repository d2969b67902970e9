"""A claimant that holds its listening sockets, for the reaper's tests.

    claimant.py SOCKET ID            claim with fds, print the port, hold them
    claimant.py SOCKET ID --fork     also fork a child that inherits them;
                                     the parent prints the child's pid, exits
    claimant.py SOCKET ID --close    hold them until a line arrives on stdin,
                                     then close them and keep running
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from pb_client import PbClient  # noqa: E402

path, ident = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else ""
c = PbClient(path)
res, fds = c.call("claim", id=ident, fds=True, owner="caller")
print(res["lease"]["port"], flush=True)
if mode == "--fork":
    child = os.fork()
    if child == 0:
        c.close()
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
    os._exit(0)
if mode == "--close":
    sys.stdin.readline()
    for fd in fds:
        os.close(fd)
    print("closed", flush=True)
time.sleep(120)
