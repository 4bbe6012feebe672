"""The official Python MCP SDK (mcp 2.3.0) client against one MCP endpoint: the same probe as
client-probe.ts (initialize, setLevel debug, list tools, call every tool with a progress callback,
sampling, elicitation and roots callbacks answering fixed values), printing one JSON record.

    python client_probe.py --url URL [--token-file F]
"""
import argparse
import json
import re

import anyio
import mcp.types as types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

ARGS = {
    "test_sampling": {"prompt": "Test prompt for sampling"},
    "test_elicitation": {"message": "Please provide your information"},
    "json_schema_2020_12_tool": {"name": "x", "address": {"street": "s", "city": "c"}},
    "test_cancellable": {"seconds": 0},
    "test_sampling_cancelled": {"ms": 10000},
}


def dump(model):
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token-file")
    a = ap.parse_args()
    headers = {}
    if a.token_file:
        headers["authorization"] = "Bearer " + open(a.token_file).read().strip()
    record = {"client": "python-mcp-2.3.0", "url": a.url}
    events = []

    async def sampling(ctx, params):
        events.append({"request": "sampling/createMessage", "params": dump(params)})
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="probe sampling answer"),
            model="probe-model",
            stop_reason="endTurn",
        )

    async def elicitation(ctx, params):
        events.append({"request": "elicitation/create", "params": dump(params)})
        return types.ElicitResult(action="accept", content={"username": "probe", "email": "probe@example.com"})

    async def roots(ctx):
        events.append({"request": "roots/list"})
        return types.ListRootsResult(roots=[types.Root(uri="file:///probe", name="probe")])

    async def logging_cb(params):
        events.append({"notification": "notifications/message", "params": dump(params)})

    try:
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(a.url, http_client=http) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(
                    read, write, sampling_callback=sampling, elicitation_callback=elicitation,
                    list_roots_callback=roots,
                    logging_callback=logging_cb,
                ) as s:
                    init = await s.initialize()
                    record["initialize"] = {
                        "serverCapabilities": dump(init.capabilities),
                        "serverVersion": dump(init.server_info),
                        "instructions": init.instructions,
                    }
                    try:
                        await s.set_logging_level("debug")
                        record["setLoggingLevel"] = "ok"
                    except Exception as e:  # noqa: BLE001
                        record["setLoggingLevel"] = {"error": str(e)}
                    listed = await s.list_tools()
                    record["tools"] = [dump(t) for t in listed.tools]
                    calls = {}
                    for tool in listed.tools:
                        bare = re.sub(r"^[^_]+_(?=(test_|json_schema))", "", tool.name)
                        events.clear()
                        progress = []

                        async def on_progress(p, total, message, _progress=progress):
                            _progress.append({"progress": p, "total": total, "message": message})

                        try:
                            with anyio.fail_after(20):
                                result = await s.call_tool(
                                    tool.name, ARGS.get(bare, {}), progress_callback=on_progress
                                )
                            await anyio.sleep(0.15)
                            calls[tool.name] = {"result": dump(result), "progress": progress, "events": list(events)}
                        except Exception as e:  # noqa: BLE001
                            calls[tool.name] = {"error": f"{type(e).__name__}: {e}", "progress": progress,
                                                "events": list(events)}
                    record["calls"] = calls
    except BaseException as e:  # noqa: BLE001
        record["fatal"] = f"{type(e).__name__}: {e}"
    print(json.dumps(record, indent=2))


anyio.run(main)
