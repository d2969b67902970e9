"""Receives descriptors over a Unix socket and keeps them, for the reaper's
tests: a process older than the lease that comes to hold its sockets the
way systemd or a process manager passes them (SCM_RIGHTS), not by fork.

    fd_receiver.py PATH   listen on PATH, print "ready", take one message
                          of descriptors, print how many, hold them
"""

import socket
import sys
import time

with socket.socket(socket.AF_UNIX) as server:
    server.bind(sys.argv[1])
    server.listen(1)
    print("ready", flush=True)
    conn, _ = server.accept()
    _, fds, _, _ = socket.recv_fds(conn, 16, 8)
    conn.close()
    print(len(fds), flush=True)
    # Bounded: the test kills us long before this.
    time.sleep(120)
