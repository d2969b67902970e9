"""A claimant that holds its listening sockets, for the reaper's tests.

    claimant.py SOCKET ID            claim with fds, print the port, hold them
    claimant.py SOCKET ID --fork     also fork a child that inherits them;
                                     the parent prints the child's pid, exits
    claimant.py SOCKET ID --close    hold them until a line arrives on stdin,
                                     then close them and keep running
    claimant.py SOCKET ID --send P   also send them (SCM_RIGHTS) to the
                                     process listening on Unix socket P
    claimant.py SOCKET ID --v4       claim only the IPv4 listener: the broker
                                     relays IPv6 to it
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from pb_client import PbClient  # noqa: E402

path, ident = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else ""
c = PbClient(path)
family = {"family": "v4"} if mode == "--v4" else {}
res, fds = c.call("claim", id=ident, fds=True, owner="caller", **family)
print(res["lease"]["port"], flush=True)
if mode == "--fork":
    child = os.fork()
    if child == 0:
        c.close()
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
    os._exit(0)
if mode == "--send":
    with socket.socket(socket.AF_UNIX) as peer:
        peer.connect(sys.argv[4])
        socket.send_fds(peer, [b"fds"], fds)
    print("sent", flush=True)
if mode == "--close":
    sys.stdin.readline()
    for fd in fds:
        os.close(fd)
    print("closed", flush=True)
time.sleep(120)
