"""A client for pb's IPC protocol, written from docs/PROTOCOL.md alone.

It exists to prove the document is enough for a client in another language,
and the end-to-end tests use it to drive the broker from many processes.
"""

import json
import socket
import struct

MAX_FDS = 8


class PbError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PbClient:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.tag = 0

    def close(self):
        self.sock.close()

    def _read_exact(self, n, fds):
        buf = b""
        while len(buf) < n:
            # recv_fds uses recvmsg, so descriptors riding on these bytes are
            # received rather than silently closed.
            data, got, _flags, _addr = socket.recv_fds(self.sock, n - len(buf), MAX_FDS)
            fds.extend(got)
            if not data:
                raise EOFError("broker closed the connection mid-frame")
            buf += data
        return buf

    def read_reply(self):
        fds = []
        (length,) = struct.unpack(">I", self._read_exact(4, fds))
        reply = json.loads(self._read_exact(length, fds))
        if reply.get("fds", 0) != len(fds):
            raise RuntimeError(f"reply announced {reply.get('fds')} fds, got {len(fds)}")
        return reply, fds

    def call(self, op, **fields):
        """Sends one request; returns (result, fds) or raises PbError."""
        self.tag += 1
        body = json.dumps({"v": 1, "tag": self.tag, "op": op, **fields}).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        reply, fds = self.read_reply()
        if reply.get("tag") != self.tag:
            raise RuntimeError(f"tag mismatch: {reply.get('tag')} != {self.tag}")
        if not reply["ok"]:
            raise PbError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"], fds

    # Streams (docs/PROTOCOL.md, "Streams"): the first reply carries
    # "more": true; then every frame with the same tag is one item, until a
    # frame without "more" ends the stream (ok, or an error such as
    # "lagged"). Until then the connection carries nothing else.

    def open_stream(self, op, **fields):
        """Sends a streaming request; returns its first result."""
        self.tag += 1
        body = json.dumps({"v": 1, "tag": self.tag, "op": op, **fields}).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        reply, _fds = self.read_reply()
        if reply.get("tag") != self.tag:
            raise RuntimeError(f"tag mismatch: {reply.get('tag')} != {self.tag}")
        if not reply["ok"]:
            raise PbError(reply["error"]["code"], reply["error"]["message"])
        self.streaming = bool(reply.get("more"))
        return reply["result"]

    def next_item(self):
        """The stream's next item; None when it ended normally. Raises
        PbError when it ended with an error (the error's details are in
        .details)."""
        if not getattr(self, "streaming", False):
            return None
        reply, _fds = self.read_reply()
        if reply.get("tag") != self.tag:
            raise RuntimeError(f"tag mismatch: {reply.get('tag')} != {self.tag}")
        if reply.get("more"):
            return reply["item"]
        self.streaming = False
        if not reply["ok"]:
            err = PbError(reply["error"]["code"], reply["error"]["message"])
            err.details = reply["error"].get("details")
            raise err
        return None
