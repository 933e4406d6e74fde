"""Drives kernelbox with the stock MCP Python SDK, as a new user would.

Usage: stock_client.py URL SCENARIO. Prints one JSON object on stdout: what the SDK saw
(results, notifications, the warnings it logged). Exits non-zero only when the SDK itself
raised; the Rust test (tests/python_client.rs) judges what it printed.
"""

import asyncio
import json
import logging
import sys

from mcp import Client


class Warnings(logging.Handler):
    """Keeps every warning the SDK logs (a failed session termination, say)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def text_of(result):
    return [block.text for block in result.content if getattr(block, "type", "") == "text"]


async def run_cell(url, code, report):
    progress = []

    async def on_progress(done, total, message):
        progress.append(len(message or ""))

    async with Client(url) as client:
        report["protocol_version"] = str(getattr(client, "protocol_version", ""))
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
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    report = {"scenario": scenario}
    if scenario == "print-600k":
        await run_cell(url, "print('x' * 600_000)", report)
    elif scenario == "print-200m":
        code = "import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 1_000_000)\nprint()"
        await run_cell(url, code, report)
    elif scenario == "tools":
        async with Client(url) as client:
            tools = await client.list_tools()
            report["tools"] = sorted(tool.name for tool in tools.tools)
            result = await client.call_tool("run_python_code", {"code": "print(6 * 7)"})
            report["structured"] = result.structured_content
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    report["warnings"] = warnings.messages
    print(json.dumps(report))


asyncio.run(main())
