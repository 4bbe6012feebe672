#!/usr/bin/env python3
"""Fake LLM provider for cogward's end-to-end gateway tests.

This is a FAKE of third-party services (Anthropic and OpenAI). It exists only
so tests can run without network access or real credentials; it must never be
used outside tests. It speaks the real wire formats closely enough that the
model gateway forwarding to it cannot tell the difference:

  * Anthropic Messages API        POST /v1/messages          (JSON and SSE)
  * OpenAI Chat Completions API   POST /v1/chat/completions  (JSON and SSE,
                                  incl. stream_options.include_usage)
  * OpenAI Responses API          POST /v1/responses         (JSON and SSE)
  * GET /healthz -> {"ok": true}

Answers are deterministic so tests can assert usage figures:
  IN   = whitespace-separated words in all request text (system/instructions
         plus every message's text content); 1 if that is 0.
  OUT  = min(max_tokens | max_completion_tokens | max_output_tokens (default
         16), 16), at least 1; 1000 if the model name contains "big".
  TEXT = "ok" repeated OUT times, joined by single spaces (streamed in up to
         4 deltas).
Model name triggers: "fail-500" -> 500 provider error, "slow" -> 2 s delay,
"big" -> OUT = 1000; a model whose name contains "scripted-agent" answers as the scripted model of
scripted_agent.py (tool calls that drive Claude Code or Codex CLI through a task; OUT is then
10 + the answer's JSON bytes / 4).

Usage: fake_provider.py --port PORT [--host 127.0.0.1] [--log FILE] [--api-key KEY]
Standard library only (Python 3.11).
"""

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, __import__("os").path.dirname(__file__))
import scripted_agent  # noqa: E402

DEFAULT_OUT = 16
MAX_OUT = 16
BIG_OUT = 1000

ARGS = None
LOG_LOCK = threading.Lock()
LOG_FILE = None

ANTHROPIC_PATHS = {"/v1/messages"}
OPENAI_PATHS = {"/v1/chat/completions", "/v1/responses"}


def new_id(prefix):
    return prefix + uuid.uuid4().hex[:24]


# ---------------------------------------------------------------- token maths

def texts(content):
    """Text strings inside a message content (string or list of blocks)."""
    if isinstance(content, str):
        return [content]
    out = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                out.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    out.append(block["text"])
                elif "content" in block:  # e.g. Anthropic tool_result blocks
                    out.extend(texts(block["content"]))
    return out


def count_in(body, path):
    parts = []
    if path == "/v1/responses":
        parts += texts(body.get("instructions"))
        inp = body.get("input")
        if isinstance(inp, str):
            parts.append(inp)
        elif isinstance(inp, list):
            for item in inp:
                if isinstance(item, dict):
                    parts += texts(item.get("content"))
                elif isinstance(item, str):
                    parts.append(item)
    else:
        parts += texts(body.get("system"))
        for msg in body.get("messages") or []:
            if isinstance(msg, dict):
                parts += texts(msg.get("content"))
    return max(1, sum(len(p.split()) for p in parts))


def count_out(body, model):
    if "big" in model:
        return BIG_OUT
    limit = DEFAULT_OUT
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        val = body.get(key)
        if isinstance(val, int) and not isinstance(val, bool):
            limit = val
            break
    return max(1, min(limit, MAX_OUT))


def split_deltas(text, n=4):
    """Split text into up to n pieces whose concatenation is text."""
    words = text.split(" ")
    n = max(1, min(n, len(words)))
    size = -(-len(words) // n)
    pieces = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return [p if i == 0 else " " + p for i, p in enumerate(pieces)]


# ---------------------------------------------------------------- error bodies

def anthropic_error(etype, message):
    return {"type": "error", "error": {"type": etype, "message": message}}


def openai_error(message, etype="invalid_request_error", code=None):
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


# ---------------------------------------------------------------- handler

class QuietServer(ThreadingHTTPServer):
    """A client hanging up mid-answer is what the hang-up tests do: no traceback for that."""

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-provider/1.0"
    sys_version = ""

    def log_message(self, fmt, *args):  # keep stdout/stderr quiet
        pass

    # -- low-level I/O

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status, obj, headers=None):
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def start_sse(self, headers):
        self.chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        for k, v in headers.items():
            self.send_header(k, v)
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.flush()

    def write_sse(self, text):
        data = text.encode()
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.wfile.write(data)
        self.wfile.flush()

    def event(self, name, obj):
        self.write_sse(f"event: {name}\ndata: {json.dumps(obj)}\n\n")

    def end_sse(self):
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    # -- logging / auth

    def log_request_line(self, model, stream, api_key_ok):
        if LOG_FILE is None:
            return
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            if name in ("authorization", "x-api-key"):
                value = f"<redacted-{len(value)}>"
            headers[name] = value
        line = json.dumps({"path": self.path, "model": model, "stream": stream,
                           "headers": headers, "api_key_ok": api_key_ok,
                           "t_ms": int(time.time() * 1000)})
        with LOG_LOCK:
            LOG_FILE.write(line + "\n")
            LOG_FILE.flush()

    def auth_ok(self, anthropic):
        key = ARGS.api_key
        if not key:
            return True
        if self.headers.get("Authorization") == f"Bearer {key}":
            return True
        return anthropic and self.headers.get("x-api-key") == key

    # -- routing

    def route(self):
        path = self.path.split("?", 1)[0]
        raw = self.read_body()
        if self.command == "GET" and path == "/healthz":
            return self.send_json(200, {"ok": True})
        anthropic = path in ANTHROPIC_PATHS or (
            path not in OPENAI_PATHS and (path.startswith("/v1/messages")
                                          or "x-api-key" in self.headers
                                          or "anthropic-version" in self.headers))
        rid = {"request-id": new_id("req_")} if anthropic else {"x-request-id": new_id("req_")}
        if self.command != "POST" or path not in ANTHROPIC_PATHS | OPENAI_PATHS:
            self.log_request_line(None, False, self.auth_ok(anthropic))
            if anthropic:
                return self.send_json(404, anthropic_error("not_found_error", "Not found"), rid)
            return self.send_json(404, openai_error(
                f"Invalid URL ({self.command} {path})"), rid)

        try:
            body = json.loads(raw or b"null")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError:
            body = None
        model = str(body.get("model") or "") if body else None
        stream = bool(body.get("stream")) if body else False
        ok = self.auth_ok(anthropic)
        self.log_request_line(model, stream, ok)

        if not ok:
            if anthropic:
                return self.send_json(401, anthropic_error(
                    "authentication_error", "invalid x-api-key"), rid)
            return self.send_json(401, openai_error(
                "Incorrect API key provided", code="invalid_api_key"), rid)
        if body is None:
            if anthropic:
                return self.send_json(400, anthropic_error(
                    "invalid_request_error", "There was an error parsing the body of your request"), rid)
            return self.send_json(400, openai_error(
                "We could not parse the JSON body of your request."), rid)
        if "slow" in model:
            time.sleep(2)
        if "fail-500" in model:
            if anthropic:
                return self.send_json(500, anthropic_error("api_error", "Internal server error"), rid)
            return self.send_json(500, openai_error(
                "The server had an error while processing your request. Sorry about that!",
                etype="server_error"), rid)

        n_in, n_out = count_in(body, path), count_out(body, model)
        text = " ".join(["ok"] * n_out)
        args = (body, model, stream, n_in, n_out, text, rid)
        if path == "/v1/messages":
            self.anthropic_messages(*args)
        elif path == "/v1/chat/completions":
            self.openai_chat(*args)
        else:
            self.openai_responses(*args)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = route

    # -- Anthropic Messages

    def anthropic_messages(self, body, model, stream, n_in, n_out, text, rid):
        blocks, stop = [{"type": "text", "text": text}], "end_turn"
        if scripted_agent.is_scripted(model):
            blocks, stop = scripted_agent.anthropic_blocks(body)
            n_out = 10 + len(json.dumps(blocks)) // 4
        usage = {"input_tokens": n_in, "output_tokens": n_out,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        msg = {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": model,
               "content": blocks, "stop_reason": stop,
               "stop_sequence": None, "usage": usage}
        if not stream:
            return self.send_json(200, msg, rid)
        self.start_sse(rid)
        start = dict(msg, content=[], stop_reason=None,
                     usage=dict(usage, output_tokens=1))
        self.event("message_start", {"type": "message_start", "message": start})
        self.event("ping", {"type": "ping"})
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                self.event("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}})
                for piece in split_deltas(block["text"]):
                    self.event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": piece}})
            else:
                self.event("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": dict(block, input={})})
                self.event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "input_json_delta",
                                                             "partial_json": json.dumps(block["input"])}})
            self.event("content_block_stop", {"type": "content_block_stop", "index": i})
        self.event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": n_out}})
        self.event("message_stop", {"type": "message_stop"})
        self.end_sse()

    # -- OpenAI Chat Completions

    def openai_chat(self, body, model, stream, n_in, n_out, text, rid):
        cid, created = new_id("chatcmpl-"), int(time.time())
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out,
                 "total_tokens": n_in + n_out}
        if not stream:
            return self.send_json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "system_fingerprint": None}, rid)
        opts = body.get("stream_options")
        with_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))

        def chunk(choices, usage_value=None):
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": model, "system_fingerprint": None, "choices": choices}
            if with_usage:
                obj["usage"] = usage_value
            self.write_sse(f"data: {json.dumps(obj)}\n\n")

        def choice(delta, finish=None):
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        self.start_sse(rid)
        chunk(choice({"role": "assistant", "content": "", "refusal": None}))
        for piece in split_deltas(text):
            chunk(choice({"content": piece}))
        chunk(choice({}, "stop"))
        if with_usage:
            chunk([], usage)
        self.write_sse("data: [DONE]\n\n")
        self.end_sse()

    # -- OpenAI Responses

    def openai_responses(self, body, model, stream, n_in, n_out, text, rid):
        resp_id, item_id = new_id("resp_"), new_id("msg_")
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"type": "message", "id": item_id, "status": "completed",
                "role": "assistant", "content": [part]}
        if scripted_agent.is_scripted(model):
            item = scripted_agent.responses_item(body)
            n_out = 10 + len(json.dumps(item)) // 4
            if item["type"] == "message":
                item_id, part = item["id"], item["content"][0]
                text = part["text"]
        usage = {"input_tokens": n_in, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": n_in + n_out}
        resp = {"id": resp_id, "object": "response", "created_at": int(time.time()),
                "status": "completed", "error": None, "incomplete_details": None,
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"), "model": model,
                "output": [item], "parallel_tool_calls": True, "previous_response_id": None,
                "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
                "metadata": body.get("metadata") or {}, "usage": usage}
        if not stream:
            return self.send_json(200, resp, rid)
        self.start_sse(rid)
        seq = 0

        def ev(name, **fields):
            nonlocal seq
            self.event(name, {"type": name, "sequence_number": seq, **fields})
            seq += 1

        pending = dict(resp, status="in_progress", output=[], usage=None)
        loc = {"item_id": item_id, "output_index": 0, "content_index": 0}
        ev("response.created", response=pending)
        ev("response.in_progress", response=pending)
        if item["type"] == "message":
            ev("response.output_item.added", output_index=0,
               item=dict(item, status="in_progress", content=[]))
            ev("response.content_part.added", **loc, part=dict(part, text=""))
            for piece in split_deltas(text):
                ev("response.output_text.delta", **loc, delta=piece, logprobs=[])
            ev("response.output_text.done", **loc, text=text, logprobs=[])
            ev("response.content_part.done", **loc, part=part)
        else:
            ev("response.output_item.added", output_index=0, item=item)
        ev("response.output_item.done", output_index=0, item=item)
        ev("response.completed", response=resp)
        self.end_sse()


def main():
    global ARGS, LOG_FILE
    parser = argparse.ArgumentParser(description="Fake Anthropic/OpenAI provider (tests only)")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log", help="append one JSON line per request to this file")
    parser.add_argument("--api-key", help="require this key on provider endpoints")
    ARGS = parser.parse_args()
    if ARGS.log:
        LOG_FILE = open(ARGS.log, "a", encoding="utf-8")
    server = QuietServer((ARGS.host, ARGS.port), Handler)
    server.daemon_threads = True
    print(f"listening on http://{ARGS.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
