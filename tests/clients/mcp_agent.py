"""An agent that uses pb through MCP, with the official Python SDK (`mcp`):
it starts `pb mcp` ($PB, with this process's environment, and $PB_MCP_ARGS
split on spaces) as its stdio server, and then reads one JSON line per step
from stdin:

- {"tool": NAME, "args": {...}}: call it; with "progress": true, collect
  the progress notifications the call sends; with "background": true, do
  not wait (prints {"started": NAME}, and the answer when it comes);
- {"list": true}: the tool names;
- {"resources": true}: the resources' URIs and the templates';
- {"read": URI}: read a resource, printing {"contents": JSON} (or a
  protocol error);
- {"cancel": true}: cancel the last background call, as the protocol
  does (notifications/cancelled with its request id); prints
  {"cancelled": ID};
- {"disconnect": true}: close the MCP session (and with it the server) while
  background calls are still pending, and stay alive, printing
  {"disconnected": true}.

It prints one JSON line per answer: {"error": bool, "result": ...,
"progress": [...]}, or {"protocol_error": CODE, "message": ..., "data": ...}
for a call the protocol refused. An empty line or end of input ends it."""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError
from mcp import types


def emit(v):
    print(json.dumps(v), flush=True)


async def call(session, step):
    progress = []

    async def on_progress(done, total, message):
        progress.append(message)

    try:
        r = await session.call_tool(
            step["tool"],
            step.get("args", {}),
            progress_callback=on_progress if step.get("progress") else None,
        )
    except McpError as e:
        # Refused by the protocol (an unknown tool), not by a tool.
        emit({"protocol_error": e.error.code, "message": e.error.message, "data": e.error.data})
        return
    emit({"error": bool(r.isError), "result": r.structuredContent, "progress": progress})


async def main():
    args = ["mcp"] + [a for a in os.environ.get("PB_MCP_ARGS", "").split(" ") if a]
    params = StdioServerParameters(command=os.environ["PB"], args=args, env=dict(os.environ))
    loop = asyncio.get_running_loop()
    readline = lambda: loop.run_in_executor(None, sys.stdin.readline)
    pending = []
    last_id = None
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            info = await session.initialize()
            emit({"server": info.serverInfo.name})
            while True:
                line = await readline()
                if not line.strip():
                    return
                step = json.loads(line)
                if step.get("list"):
                    tools = await session.list_tools()
                    emit({"tools": [t.name for t in tools.tools]})
                elif step.get("resources"):
                    rs = await session.list_resources()
                    ts = await session.list_resource_templates()
                    emit({"resources": [str(r.uri) for r in rs.resources],
                          "templates": [t.uriTemplate for t in ts.resourceTemplates]})
                elif "read" in step:
                    try:
                        r = await session.read_resource(step["read"])
                        emit({"contents": json.loads(r.contents[0].text)})
                    except McpError as e:
                        emit({"protocol_error": e.error.code, "message": e.error.message, "data": e.error.data})
                elif step.get("disconnect"):
                    break
                elif step.get("background"):
                    # The id the SDK gives the call's request (its counter).
                    last_id = session._request_id
                    pending.append(asyncio.create_task(call(session, step)))
                    emit({"started": step["tool"]})
                elif step.get("cancel"):
                    await session.send_notification(types.ClientNotification(types.CancelledNotification(
                        params=types.CancelledNotificationParams(requestId=last_id, reason="test"))))
                    emit({"cancelled": last_id})
                else:
                    await call(session, step)
            for t in pending:
                t.cancel()
    emit({"disconnected": True})
    while (await readline()).strip():
        pass


asyncio.run(main())
