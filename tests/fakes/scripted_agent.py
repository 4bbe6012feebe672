"""A scripted model for fake_provider.py: drives a real agent CLI (Claude Code on the Anthropic
Messages wire, Codex CLI on the OpenAI Responses wire) through a fixed task, so the CLI does
real work through the real gateway with no real model.

Used when the request's model name contains "scripted-agent". The step that answers a call
is chosen only by how many tool results the conversation already holds (Anthropic: tool_result
blocks in `messages`; Responses: *_output items in `input`), so the model is stateless and a
retried call gets the same answer. Calls without tools (a CLI's side calls: titles, summaries)
get a short text.

The task (each step uses the CLI's own tool names and input shapes, as its request lists them):
  0 write hello.txt            3 run a shell command           6 MCP get-sum (escalated)
  1 read hello.txt             4 MCP echo (permitted)          7 final message
  2 edit hello.txt             5 MCP echo of "rm -rf" (denied on its argument)
"""

import json
import re
import uuid

HELLO = "hello from the agent\n"
EDITED_FROM, EDITED_TO = "hello from the agent", "hello from the governed agent"
COMMAND = "echo ran > ran.txt && ls"
FINAL = "All scripted steps done."

STEPS = [
    {"tool": "write", "path": "hello.txt", "content": HELLO},
    {"tool": "read", "path": "hello.txt"},
    {"tool": "edit", "path": "hello.txt", "old": EDITED_FROM, "new": EDITED_TO},
    {"tool": "shell", "command": COMMAND},
    {"tool": "mcp", "name": "everything_echo", "args": {"message": "hello through the gateway"}},
    {"tool": "mcp", "name": "everything_echo", "args": {"message": "now rm -rf / please"}},
    {"tool": "mcp", "name": "everything_get-sum", "args": {"a": 40, "b": 2}},
    {"text": FINAL},
]

RESULT_TYPES = ("function_call_output", "custom_tool_call_output", "mcp_call_output")


def is_scripted(model):
    return "scripted-agent" in model


def new_id(prefix):
    return prefix + uuid.uuid4().hex[:24]


def _text(x):
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        return "\n".join(_text(i) for i in x)
    if isinstance(x, dict):
        return _text(x.get("text", "")) + _text(x.get("content", ""))
    return ""


def _workdir(blob):
    for pattern in (r"Primary working directory:\s*(\S+)", r"<cwd>([^<]+)</cwd>",
                    r"Working directory:\s*(\S+)"):
        m = re.search(pattern, blob)
        if m:
            return m.group(1).strip()
    return "/work"


def _wanted(name):
    """A step's MCP tool as the gateway names it (`everything_echo`), then as the server itself
    does (`echo`: a CLI connected to the server directly, as the benchmark's bare side is)."""
    return [name, name.split("_", 1)[-1]]


def _step(n_results, has_tools):
    if not has_tools:
        return {"text": "ok"}
    return STEPS[min(n_results, len(STEPS) - 1)]


# ------------------------------------------------------------- Anthropic Messages (Claude Code)

def anthropic_blocks(body):
    """The content blocks and stop reason of the scripted answer to a Messages request."""
    messages = body.get("messages") or []
    n_results = sum(1 for m in messages if isinstance(m.get("content"), list)
                    for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result")
    step = _step(n_results, bool(body.get("tools")))
    if "text" in step:
        return [{"type": "text", "text": step["text"]}], "end_turn"
    blob = _text(body.get("system", "")) + "\n" + "\n".join(_text(m.get("content")) for m in messages[:1])
    wd = _workdir(blob)
    names = [t.get("name") for t in body.get("tools") or []]
    kind = step["tool"]
    if kind == "write":
        name, inp = "Write", {"file_path": f"{wd}/{step['path']}", "content": step["content"]}
    elif kind == "read":
        name, inp = "Read", {"file_path": f"{wd}/{step['path']}"}
    elif kind == "edit":
        name, inp = "Edit", {"file_path": f"{wd}/{step['path']}",
                             "old_string": step["old"], "new_string": step["new"]}
    elif kind == "shell":
        name, inp = "Bash", {"command": step["command"], "description": "scripted shell step"}
    else:
        found = [n for n in names if n and n.startswith("mcp__")
                 and any(n.endswith("__" + w) for w in _wanted(step["name"]))]
        name, inp = (found[0] if found else "mcp__cogward__" + step["name"]), step["args"]
    return [{"type": "text", "text": f"Step {n_results}."},
            {"type": "tool_use", "id": new_id("toolu_"), "name": name, "input": inp}], "tool_use"


# ------------------------------------------------------------- OpenAI Responses (Codex CLI)

def _tools(body):
    funcs, customs, namespaces = [], [], {}
    for t in body.get("tools") or []:
        kind = t.get("type")
        if kind == "function":
            funcs.append(t.get("name"))
        elif kind == "custom":
            customs.append(t.get("name"))
        elif kind == "namespace":
            namespaces[t.get("name")] = [x.get("name") for x in t.get("tools") or []]
    return funcs, customs, namespaces


def responses_item(body):
    """The output item of the scripted answer to a Responses request."""
    items = body.get("input") if isinstance(body.get("input"), list) else []
    n_results = sum(1 for it in items if isinstance(it, dict) and it.get("type") in RESULT_TYPES)
    step = _step(n_results, bool(body.get("tools")))
    if "text" in step:
        return {"type": "message", "id": new_id("msg_"), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": step["text"], "annotations": []}]}
    blob = _text(body.get("instructions", "")) + "\n" + "\n".join(
        _text(it.get("content")) for it in items if isinstance(it, dict) and it.get("type") == "message")
    wd = _workdir(blob)
    funcs, customs, namespaces = _tools(body)
    call_id = new_id("call_")
    kind = step["tool"]
    if kind in ("write", "edit") and "apply_patch" in customs + funcs:
        if kind == "write":
            patch = "*** Begin Patch\n*** Add File: %s\n%s*** End Patch\n" % (
                step["path"], "".join("+" + line + "\n" for line in step["content"].splitlines()))
        else:
            patch = "*** Begin Patch\n*** Update File: %s\n@@\n-%s\n+%s\n*** End Patch\n" % (
                step["path"], step["old"], step["new"])
        if "apply_patch" in customs:
            return {"type": "custom_tool_call", "id": new_id("ctc_"), "status": "completed",
                    "call_id": call_id, "name": "apply_patch", "input": patch}
        return {"type": "function_call", "id": new_id("fc_"), "status": "completed",
                "call_id": call_id, "name": "apply_patch", "arguments": json.dumps({"input": patch})}
    if kind == "read":
        step, kind = {"command": "cat " + step["path"]}, "shell"
    if kind == "shell":
        if "exec_command" in funcs:
            name, args = "exec_command", {"cmd": step["command"], "workdir": wd, "yield_time_ms": 2000}
        elif "shell_command" in funcs:
            name, args = "shell_command", {"command": step["command"], "workdir": wd}
        else:
            name, args = "shell", {"command": ["bash", "-lc", step["command"]], "workdir": wd}
        return {"type": "function_call", "id": new_id("fc_"), "status": "completed",
                "call_id": call_id, "name": name, "arguments": json.dumps(args)}
    want = step["name"]
    wanted = _wanted(want) + [w.replace("-", "_") for w in _wanted(want)]
    for namespace, inner in namespaces.items():
        found = [n for n in inner if n in wanted]
        if namespace.startswith("mcp__") and found:
            return {"type": "function_call", "id": new_id("fc_"), "status": "completed",
                    "call_id": call_id, "namespace": namespace, "name": found[0],
                    "arguments": json.dumps(step["args"])}
    return {"type": "function_call", "id": new_id("fc_"), "status": "completed", "call_id": call_id,
            "name": "mcp__cogward__" + want.replace("-", "_"), "arguments": json.dumps(step["args"])}
