#!/usr/bin/env python3
"""Stand-ins for Slack and Jira, for the demo (the e2e tests have their own, in Rust).

Their servers are out of reach here, so this speaks their wire formats instead:

  serve --port P --log FILE --slack-token T --jira-user U --jira-token K
      Slack's Web API (POST /api/chat.postMessage, /api/chat.update: bearer token, answers
      HTTP 200 {"ok": ...}) and Jira Cloud's REST v3 (POST /rest/api/3/issue -> 201 {id, key,
      self}; POST /rest/api/3/issue/{key}/comment -> 201; Basic auth). Every call is appended
      to FILE as one JSON line {"api": ..., "body": ...}. Prints "listening on URL".

  click --callback URL --secret S --user U --action approve|reject --value V
      An approver pressing a button of a posted message: Slack's interactive `block_actions`
      callback, form-encoded in `payload`, signed v0 (HMAC-SHA256 over v0:{ts}:{body}).

  transition --callback URL --secret S --account A --label L --to STATUS --delivery ID
      An approver moving an issue to STATUS: Jira's `jira:issue_updated` webhook with the status
      change in changelog.items, signed X-Hub-Signature: sha256=<HMAC of the body>, with its
      X-Atlassian-Webhook-Identifier.

  posted --log FILE --kind slack-value|jira-label --prefix P
      The last posted Slack button value (or Jira label) starting with P; exit 1 if none.
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import sys
import time
import urllib.parse
import urllib.request


def serve(args):
    issues = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def record(self, api, body):
            with open(args.log, "a") as f:
                f.write(json.dumps({"api": api, "body": body}) + "\n")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            auth = self.headers.get("authorization", "")
            if self.path.startswith("/api/"):
                if auth != f"Bearer {args.slack_token}":
                    return self.answer(200, {"ok": False, "error": "invalid_auth"})
                method = self.path[len("/api/"):]
                if method not in ("chat.postMessage", "chat.update"):
                    return self.answer(200, {"ok": False, "error": "unknown_method"})
                self.record(method, body)
                ts = body.get("ts") or f"{time.time():.6f}"
                return self.answer(200, {"ok": True, "channel": body.get("channel"), "ts": ts,
                                         "message": {"text": body.get("text")}})
            basic = "Basic " + base64.b64encode(f"{args.jira_user}:{args.jira_token}".encode()).decode()
            if auth != basic:
                return self.answer(401, {"errorMessages": ["unauthorized"]})
            if self.path == "/rest/api/3/issue":
                key = f"{body['fields']['project']['key']}-{len(issues) + 1}"
                issues[key] = body
                self.record("issue", dict(body, key=key))
                return self.answer(201, {"id": str(10000 + len(issues)), "key": key,
                                         "self": f"http://{self.headers['host']}/rest/api/3/issue/{key}"})
            parts = self.path.split("/")
            if len(parts) == 7 and parts[:5] == ["", "rest", "api", "3", "issue"] and parts[6] == "comment":
                if parts[5] not in issues:
                    return self.answer(404, {"errorMessages": ["Issue does not exist"], "errors": {}})
                self.record("comment", dict(body, key=parts[5]))
                return self.answer(201, {"id": "10100"})
            return self.answer(404, {"errorMessages": ["no such resource"]})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def send(url, body, headers):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def click(args):
    payload = {
        "type": "block_actions",
        "user": {"id": args.user, "username": args.user.lower(), "team_id": "T0DEMO"},
        "api_app_id": "A0DEMO", "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0DEMO"},
        "trigger_id": "1.2.3", "team": {"id": "T0DEMO", "domain": "demo"},
        "channel": {"id": "C0DEMO", "name": "approvals"},
        "message": {"type": "message", "ts": "1700000000.000100", "text": "approve?"},
        "response_url": "https://hooks.slack.com/actions/T0DEMO/1/abc",
        "actions": [{"action_id": args.action, "block_id": "cogward-decision", "type": "button",
                     "value": args.value, "action_ts": f"{time.time():.6f}",
                     "text": {"type": "plain_text", "text": args.action}}],
        "state": {"values": {}},
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()))
    signature = hmac.new(args.secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    status, text = send(args.callback, body, {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": f"v0={signature}",
    })
    print(f"slack callback: HTTP {status} {text}")
    return 0 if status == 200 else 1


def transition(args):
    body = json.dumps({
        "timestamp": int(time.time() * 1000), "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": args.account, "displayName": "Approver", "active": True},
        "issue": {"id": "10001", "key": "OPS-1", "self": "https://example.atlassian.net/rest/api/3/issue/10001",
                  "fields": {"summary": "Approve", "labels": [args.label], "status": {"name": args.to}}},
        "changelog": {"id": str(int(time.time() * 1000)), "items": [
            {"field": "status", "fieldtype": "jira", "fieldId": "status", "from": "1",
             "fromString": "Waiting", "to": "2", "toString": args.to}]},
    }).encode()
    signature = hmac.new(args.secret.encode(), body, hashlib.sha256).hexdigest()
    status, text = send(args.callback, body, {
        "content-type": "application/json",
        "x-hub-signature": f"sha256={signature}",
        "x-atlassian-webhook-identifier": args.delivery,
    })
    print(f"jira webhook: HTTP {status} {text}")
    return 0 if status == 200 else 1


def posted(args):
    found = None
    try:
        lines = open(args.log).read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        call = json.loads(line)
        if args.kind == "slack-value" and call["api"] == "chat.postMessage":
            for block in call["body"].get("blocks", []):
                for element in block.get("elements", []):
                    if element.get("value", "").startswith(args.prefix):
                        found = element["value"]
        if args.kind == "jira-label" and call["api"] == "issue":
            for label in call["body"]["fields"].get("labels", []):
                if label.startswith(args.prefix):
                    found = label
    if found is None:
        return 1
    print(found)
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True)
    p.add_argument("--slack-token", required=True)
    p.add_argument("--jira-user", required=True)
    p.add_argument("--jira-token", required=True)
    p = sub.add_parser("click")
    for a in ("--callback", "--secret", "--user", "--action", "--value"):
        p.add_argument(a, required=True)
    p = sub.add_parser("transition")
    for a in ("--callback", "--secret", "--account", "--label", "--to", "--delivery"):
        p.add_argument(a, required=True)
    p = sub.add_parser("posted")
    for a in ("--log", "--kind", "--prefix"):
        p.add_argument(a, required=True)
    args = parser.parse_args()
    return {"serve": serve, "click": click, "transition": transition, "posted": posted}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
