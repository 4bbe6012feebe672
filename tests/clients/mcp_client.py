#!/usr/bin/env python3
"""An MCP client for cogward's tests, built only on the official Python SDK (`mcp` 2.3.0).

    mcp_client.py --url URL [--token TOKEN] OPS_JSON

OPS_JSON is a JSON array of operations, run in order in one session (Streamable HTTP, legacy
`initialize` handshake, `Authorization: Bearer TOKEN` on every request). One JSON line per result
on stdout, flushed as it happens:

    {"op":"initialize","protocol_version":V,"server":{"name":N,"version":V}}   (always first)
    {"op":"list"}                        -> {"op":"list","tools":[names...]}
    {"op":"call","name":N,"arguments":{...},"timeout":S (default 60),"progress":bool}
                                         -> {"op":"call","name":N,"is_error":bool,"text":T,"meta":M,
                                             "progress":[[p,total,message],...]}
    {"op":"sleep","seconds":S}           -> {"op":"sleep","seconds":S}
    {"op":"prompts"}                     -> {"op":"prompts","prompts":[names...]}
    {"op":"prompt","name":N,"arguments":{...}}
                                         -> {"op":"prompt","name":N,"texts":[each message's text]}
    {"op":"resources"}                   -> {"op":"resources","resources":[uris...],"templates":[uri templates...]}
    {"op":"read","uri":U,"server":S}     -> {"op":"read","uri":U,"texts":[...],"blobs":[base64 lengths...]}
                                            (S, optional: the gateway's `_meta["cogward/server"]`)
    {"op":"complete","prompt":N|"uri":U,"argument":{"name":A,"value":V}}
                                         -> {"op":"complete","values":[...]}
    {"op":"set_level","level":L}         -> {"op":"set_level","level":L}

A failed list or call prints {"op":..,("name":N,)"error":{"code":C,"message":M}}: C is the JSON-RPC
code when the SDK raised MCPError, else null with "<ExceptionType>: <text>" as the message. The
error object also has "data" when the JSON-RPC error carried some, and "http_status" when the
server answered an HTTP request of this operation with 4xx/5xx (the SDK itself reports, say, a
plain 401 only as -32603 "Server returned an error response").

Exit status: 0 when every operation ran (tool or JSON-RPC errors included); 2 when connecting or
initializing failed ({"op":"connect","error":...}); 3 when the session broke down mid-way (that
operation's error line is printed, later operations are not run); 64 for a bad command line.
"""

import argparse
import json
import sys

import anyio
import httpx2
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

CONNECT_FAILED, SESSION_BROKE, USAGE = 2, 3, 64


def emit(obj):
    print(json.dumps(obj), flush=True)


def innermost(exc):
    """The meaningful exception inside (nested) exception groups: the first that is not a cancellation."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (inner or list(exc.exceptions))[0]
    return exc


class Recorder:
    """HTTP statuses >= 400 seen since the last `take()`, from an httpx2 response hook."""

    def __init__(self):
        self.statuses = []

    async def hook(self, response):
        if response.status_code >= 400:
            self.statuses.append(response.status_code)

    def take(self):
        statuses, self.statuses = self.statuses, []
        return statuses


def describe(exc, statuses):
    exc = innermost(exc)
    if isinstance(exc, MCPError):
        error = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            error["data"] = exc.data
    else:
        error = {"code": None, "message": f"{type(exc).__name__}: {exc}"}
    if statuses:
        error["http_status"] = statuses[-1]
    return error


def parse_ops(text):
    try:
        ops = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"OPS_JSON is not JSON: {e}")
    if not isinstance(ops, list):
        raise ValueError("OPS_JSON must be a JSON array")
    for op in ops:
        kind = op.get("op") if isinstance(op, dict) else None
        if kind not in ("list", "call", "sleep", "prompts", "prompt", "resources", "read", "complete",
                        "set_level"):
            raise ValueError(f"unknown operation: {json.dumps(op)}")
        if kind in ("call", "prompt") and not isinstance(op.get("name"), str):
            raise ValueError(f"{kind} without a name: {json.dumps(op)}")
        if kind == "read" and not isinstance(op.get("uri"), str):
            raise ValueError(f"read without a uri: {json.dumps(op)}")
        if kind == "sleep" and not isinstance(op.get("seconds"), (int, float)):
            raise ValueError(f"sleep without seconds: {json.dumps(op)}")
    return ops


def head(op):
    """The identifying part of an operation's output line."""
    return {"op": op["op"], **{k: op[k] for k in ("name", "uri", "prompt") if k in op}}


async def run_op(session, op):
    """Runs one operation and returns its output line; MCPError and HTTP-level errors propagate."""
    if op["op"] == "list":
        result = await session.list_tools()
        return {"op": "list", "tools": [t.name for t in result.tools]}
    if op["op"] == "sleep":
        await anyio.sleep(op["seconds"])
        return {"op": "sleep", "seconds": op["seconds"]}
    if op["op"] == "prompts":
        result = await session.list_prompts()
        return {"op": "prompts", "prompts": [p.name for p in result.prompts]}
    if op["op"] == "prompt":
        result = await session.get_prompt(op["name"], op.get("arguments"))
        texts = [m.content.text for m in result.messages if getattr(m.content, "type", None) == "text"]
        return {"op": "prompt", "name": op["name"], "texts": texts}
    if op["op"] == "resources":
        listed = await session.list_resources()
        templates = await session.list_resource_templates()
        return {"op": "resources", "resources": [str(r.uri) for r in listed.resources],
                "templates": [t.uri_template for t in templates.resource_templates]}
    if op["op"] == "read":
        meta = {"cogward/server": op["server"]} if "server" in op else None
        result = await session.read_resource(op["uri"], meta=meta)
        return {"op": "read", "uri": op["uri"],
                "texts": [c.text for c in result.contents if hasattr(c, "text")],
                "blobs": [len(c.blob) for c in result.contents if hasattr(c, "blob")]}
    if op["op"] == "complete":
        if "prompt" in op:
            ref = types.PromptReference(type="ref/prompt", name=op["prompt"])
        else:
            ref = types.ResourceTemplateReference(type="ref/resource", uri=op["uri"])
        result = await session.complete(ref, op["argument"])
        return {"op": "complete", "values": result.completion.values}
    if op["op"] == "set_level":
        await session.set_logging_level(op["level"])
        return {"op": "set_level", "level": op["level"]}
    progress = []

    async def on_progress(p, total, message):
        progress.append([p, total, message])

    result = await session.call_tool(
        op["name"],
        op.get("arguments") or {},
        read_timeout_seconds=float(op.get("timeout", 60)),
        progress_callback=on_progress if op.get("progress") else None,
    )
    return {
        "op": "call",
        "name": op["name"],
        "is_error": bool(result.is_error),
        "text": "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text"),
        "meta": result.model_dump(by_alias=True, mode="json").get("_meta"),
        "progress": progress,
    }


async def main(url, token, ops):
    recorder = Recorder()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    http = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(30.0, read=300.0),  # the SDK's own defaults (create_mcp_http_client)
        event_hooks={"response": [recorder.hook]},
    )
    connected = False
    current = None  # the operation under way, for an error that escapes the session
    try:
        async with http, streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                emit({
                    "op": "initialize",
                    "protocol_version": init.protocol_version,
                    "server": {"name": init.server_info.name, "version": init.server_info.version},
                })
                connected = True
                for op in ops:
                    current = op
                    recorder.take()
                    try:
                        line = await run_op(session, op)
                    except Exception as e:  # incl. MCPError and ExceptionGroup; a broken session ends below
                        line = {**head(op), "error": describe(e, recorder.take())}
                    emit(line)
                    current = None
    except Exception as e:
        if not connected:
            emit({"op": "connect", "error": describe(e, recorder.take())})
            return CONNECT_FAILED
        if current is not None:
            emit({**head(current), "error": describe(e, recorder.take())})
            return SESSION_BROKE
        # Only closing the session (the DELETE) failed after every operation ran: not the test's concern.
        print(f"mcp_client: while closing the session: {describe(e, [])['message']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the MCP endpoint, e.g. http://127.0.0.1:3901/mcp")
    parser.add_argument("--token", help="bearer credential sent as Authorization: Bearer TOKEN")
    parser.add_argument("ops", metavar="OPS_JSON", help="JSON array of operations")

    def usage_error(message):
        parser.print_usage(sys.stderr)
        print(f"mcp_client: {message}", file=sys.stderr)
        sys.exit(USAGE)

    parser.error = usage_error  # argparse would exit 2, which means "connect failed" here
    args = parser.parse_args()
    try:
        operations = parse_ops(args.ops)
    except ValueError as e:
        usage_error(e)
    sys.exit(anyio.run(main, args.url, args.token, operations))
