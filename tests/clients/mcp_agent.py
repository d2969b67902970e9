"""An agent that uses pb through MCP, with the official Python SDK (`mcp`):
it starts `pb mcp` ($PB, with this process's environment) as its stdio
server, and then reads one JSON line per step from stdin,
{"tool": NAME, "args": {...}}, or {"list": true} for the tool names, and
prints one JSON line per answer: {"error": bool, "result": ...}, or
{"protocol_error": CODE, "message": ...} for a call the protocol refused. An empty
line or end of input ends it, and with it the server."""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError


async def main():
    params = StdioServerParameters(command=os.environ["PB"], args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            info = await session.initialize()
            print(json.dumps({"server": info.serverInfo.name}), flush=True)
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line.strip():
                    return
                step = json.loads(line)
                if step.get("list"):
                    tools = await session.list_tools()
                    print(json.dumps({"tools": [t.name for t in tools.tools]}), flush=True)
                    continue
                try:
                    r = await session.call_tool(step["tool"], step.get("args", {}))
                except McpError as e:
                    # Refused by the protocol (an unknown tool, arguments
                    # that fail the schema), not by pb.
                    print(json.dumps({"protocol_error": e.error.code, "message": e.error.message}), flush=True)
                    continue
                print(json.dumps({"error": bool(r.isError), "result": r.structuredContent}), flush=True)


asyncio.run(main())
