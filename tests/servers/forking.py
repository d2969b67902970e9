"""A pre-fork server: binds its hard-coded port, listens, then forks
workers that accept on the inherited socket, as gunicorn and Apache do.
Each answer names the worker. Usage: forking.py PORT WORKERS"""
import os
import signal
import socket
import sys

port, workers = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
print(f"master {os.getpid()} listening on {s.getsockname()[1]}", flush=True)

children = []
for _ in range(workers):
    pid = os.fork()
    if pid == 0:
        while True:
            conn, _ = s.accept()
            conn.recv(4096)
            body = f"worker {os.getpid()} of {os.getppid()}\n".encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            conn.close()
    children.append(pid)
s.close()


def stop(*_):
    for c in children:
        os.kill(c, signal.SIGTERM)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
for c in children:
    os.waitpid(c, 0)
