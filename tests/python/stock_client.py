"""Drives kernelbox with the stock MCP Python SDK, as a new user would.

Usage: stock_client.py URL SCENARIO [MODE]. MODE is the SDK's protocol choice: `auto` (the
default: 2026-07-28 when the server speaks it), `legacy` (the 2025 handshake) or a version.
Prints one JSON object on stdout: what the SDK saw
(results, notifications, the warnings it logged). Exits non-zero only when the SDK itself
raised; the Rust test (tests/python_client.rs) judges what it printed.
"""

import asyncio
import json
import logging
import os
import sys
from typing import Any, Literal

from mcp import Client, StdioServerParameters
from mcp.client.extension import ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import CallToolResult, Request, Result
from pydantic import TypeAdapter


class Warnings(logging.Handler):
    """Keeps every warning the SDK logs (a failed session termination, say)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class TaskHandle(Result):
    """What a server answers a tools/call with when it runs the call as a task (SEP-2663)."""

    result_type: Literal["task"]
    task_id: str
    status: str


class TaskRequest(Request[dict[str, Any], str]):
    """tasks/get and tasks/cancel: the SDK sends them like any request, naming the task."""

    name_param = "taskId"


class Tasks(ClientExtension):
    """The tasks extension as a client written against the SDK's extension API adds it:
    a call answered with a task is polled with tasks/get until it ends, and what it printed
    while it ran is kept in the report."""

    identifier = "io.modelcontextprotocol/tasks"

    def __init__(self, report, cancel_after=None):
        self.report = report
        self.cancel_after = cancel_after

    def claims(self):
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self.resolve)]

    async def resolve(self, handle, ctx):
        seen = []
        while True:
            task = await ctx.session.send_request(
                TaskRequest(method="tasks/get", params={"taskId": handle.task_id}),
                TypeAdapter(dict[str, Any]),
            )
            if task["status"] != "working":
                break
            output = task.get("_meta", {}).get("kernelbox/output", {})
            seen.append(output.get("text", ""))
            if self.cancel_after is not None and self.cancel_after in seen[-1]:
                self.cancel_after = None
                await ctx.session.send_request(
                    TaskRequest(method="tasks/cancel", params={"taskId": handle.task_id}),
                    TypeAdapter(dict[str, Any]),
                )
            await asyncio.sleep(0.3)
        self.report["task_status"] = task["status"]
        self.report.setdefault("task_statuses", []).append(task["status"])
        self.report["seen_while_working"] = seen
        if task["status"] != "completed":
            raise RuntimeError(f"the task ended {task['status']}: {task}")
        return CallToolResult.model_validate(task["result"])


def connect(url, mode, extensions=()):
    """A client of `url`, with the bearer token in KERNELBOX_TOKEN when there is one; a URL
    `stdio:COMMAND` launches COMMAND with the JSON list of arguments in KERNELBOX_STDIO_ARGS
    and speaks MCP over its stdin and stdout."""
    if url.startswith("stdio:"):
        args = json.loads(os.environ["KERNELBOX_STDIO_ARGS"])
        server = StdioServerParameters(command=url[len("stdio:"):], args=args)
        return Client(server, mode=mode, extensions=list(extensions))
    token = os.environ.get("KERNELBOX_TOKEN")
    if not token:
        return Client(url, mode=mode, extensions=list(extensions))
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    transport = streamable_http_client(url, http_client=http)
    return Client(transport, mode=mode, extensions=list(extensions))


def text_of(result):
    return [block.text for block in result.content if getattr(block, "type", "") == "text"]


async def run_cell(url, mode, code, report):
    progress = []

    async def on_progress(done, total, message):
        progress.append(len(message or ""))

    async with connect(url, mode) as client:
        report["protocol_version"] = str(client.protocol_version)
        result = await client.call_tool(
            "run_python_code",
            {"code": code, "timeout": 600},
            progress_callback=on_progress,
        )
        report["is_error"] = bool(result.is_error)
        report["structured"] = result.structured_content
        report["text_bytes"] = sum(len(t.encode()) for t in text_of(result))
        report["progress_messages"] = len(progress)
        report["largest_progress_message"] = max(progress, default=0)


async def main():
    url, scenario = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "auto"
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    report = {"scenario": scenario}
    if scenario == "print-600k":
        await run_cell(url, mode, "print('x' * 600_000)", report)
    elif scenario == "print-200m":
        code = "import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 1_000_000)\nprint()"
        await run_cell(url, mode, code, report)
    elif scenario == "tools":
        async with connect(url, mode) as client:
            report["protocol_version"] = str(client.protocol_version)
            tools = await client.list_tools()
            report["tools"] = sorted(tool.name for tool in tools.tools)
            result = await client.call_tool("run_python_code", {"code": "x = 6 * 7\nprint(x)"})
            report["structured"] = result.structured_content
            created = await client.call_tool("create_session", {"session_id": "py"})
            report["created"] = created.structured_content
            switched = await client.call_tool("switch_session", {"session_id": "py"})
            report["switched"] = switched.structured_content
            here = await client.call_tool("run_python_code", {"code": "print('x' in dir())"})
            report["after_switch"] = here.structured_content
        async with connect(url, mode) as again:
            # A new client of the same identity: over 2026-07-28 the current session is the
            # identity's, so it is still `py`; over a 2025 connection it is `default` again.
            where = await again.call_tool("run_python_code", {"code": "print(x)"})
            report["next_client"] = where.structured_content
    elif scenario == "claim":
        # Makes session `mine` this identity's current one.
        async with connect(url, mode) as client:
            await client.call_tool("create_session", {"session_id": "mine"})
            switched = await client.call_tool("switch_session", {"session_id": "mine"})
            report["switched"] = switched.structured_content
    elif scenario == "look":
        # Where this identity's cells run, what it sees, and whether it reaches `mine`.
        async with connect(url, mode) as client:
            ran = await client.call_tool("run_python_code", {"code": "print(1)"})
            report["ran_in"] = ran.structured_content["session_id"]
            listed = await client.call_tool("list_sessions", {})
            report["sessions"] = sorted(listed.structured_content["sessions"])
            other = await client.call_tool("run_python_code", {"code": "1", "session_id": "mine"})
            report["mine_refused"] = bool(other.is_error)
            report["mine_message"] = " ".join(text_of(other))
    elif scenario == "read-big":
        # A 3 MiB file of control characters (six bytes each as JSON), read in the parts
        # read_file cuts it into.
        async with connect(url, mode) as client:
            report["protocol_version"] = str(client.protocol_version)
            code = "open('big.log', 'w').write(''.join(chr(i % 128) for i in range(3 * 2**20)))"
            await client.call_tool("run_python_code", {"code": code})
            offset, held, parts = 0, 0, 0
            while True:
                read = (await client.call_tool("read_file", {"path": "big.log", "offset": offset})).structured_content
                held += len(read["text"].encode())
                parts += 1
                if read.get("next_offset") is None or parts > 100:
                    break
                offset = read["next_offset"]
            report["read_bytes"] = held
            report["parts"] = parts
    elif scenario == "task-cancel":
        # A cell cancelled once it printed; then the kernel must still hold its variables.
        tasks = Tasks(report, cancel_after="started")
        async with connect(url, mode, [tasks]) as client:
            report["protocol_version"] = str(client.protocol_version)
            await client.call_tool("run_python_code", {"code": "x = 42"})
            code = "import time\nprint('started', flush=True)\ntime.sleep(300)"
            try:
                await client.call_tool("run_python_code", {"code": code, "timeout": 600})
            except RuntimeError as error:
                report["cancel_error"] = str(error)
            after = await client.call_tool("run_python_code", {"code": "x"})
            report["after"] = after.structured_content
    elif scenario == "task":
        # A 5 s cell, run as a task when the protocol lets the SDK take one.
        code = "import time\nfor i in range(5):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n'done'"
        async with connect(url, mode, [Tasks(report)]) as client:
            report["protocol_version"] = str(client.protocol_version)
            result = await client.call_tool("run_python_code", {"code": code})
            report["structured"] = result.structured_content
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    report["warnings"] = warnings.messages
    print(json.dumps(report))


asyncio.run(main())
