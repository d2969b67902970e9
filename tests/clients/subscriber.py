"""A pub/sub subscriber for the tests, through the streaming protocol.

Usage: subscriber.py SOCKET COUNT [--since ID] PATTERN...

Subscribes, prints the first reply as a JSON line, then each message as a
JSON line as it arrives; after COUNT messages it waits QUIET seconds more
(0.5) for any message it should not get, printing those too, and exits.
If the stream ends with an error, prints {"error": code, "details": ...}.
"""

import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pb_client import PbClient, PbError  # noqa: E402

args = sys.argv[1:]
sock, count, rest = args[0], int(args[1]), args[2:]
since = None
if rest and rest[0] == "--since":
    since, rest = int(rest[1]), rest[2:]
client = PbClient(sock)
fields = {"patterns": rest}
if since is not None:
    fields["since_id"] = since
print(json.dumps(client.open_stream("subscribe", **fields)), flush=True)
got = 0
try:
    while True:
        if got >= count:
            client.sock.settimeout(0.5)
        item = client.next_item()
        if item is None:
            break
        print(json.dumps(item), flush=True)
        got += 1
except socket.timeout:
    pass
except PbError as e:
    print(json.dumps({"error": e.code, "details": getattr(e, "details", None)}), flush=True)
