"""Holds things for a test until killed: with "lock NAME", a lock owned by
this process; with "agent ID SERVICE LOCK", an agent living with this
process that claims SERVICE and takes LOCK in its name. Prints one JSON
line (the replies) once it holds them, then sleeps.

Usage: holder.py SOCKET lock NAME | holder.py SOCKET agent ID SERVICE LOCK
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pb_client import PbClient  # noqa: E402

client = PbClient(sys.argv[1])
if sys.argv[2] == "lock":
    reply, _ = client.call("lock_acquire", name=sys.argv[3])
    print(json.dumps(reply), flush=True)
else:
    agent, service, lock = sys.argv[3], sys.argv[4], sys.argv[5]
    a, _ = client.call("agent_register", id=agent, owner="caller")
    s, _ = client.call("claim", id=service, agent=agent)
    l, _ = client.call("lock_acquire", name=lock, agent=agent)
    print(json.dumps({"agent": a, "service": s, "lock": l}), flush=True)
# Bounded: the test kills us long before this.
time.sleep(300)
