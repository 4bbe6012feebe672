#!/usr/bin/env python3
"""Diff two client-probe records (client-probe.ts or client_probe.py output): direct vs gateway.

    compare_clients.py DIRECT.json GATEWAY.json [--prefix conf] [--out DIFF.json]

Normalisation before diffing, and nothing else: the gateway's `<prefix>_` is stripped from tool
names (the tool list and the per-call keys); the decimal progress token an upstream echoes in
`test_tool_with_progress`'s text is masked (each client picks its own); `initialize` is compared
separately (the gateway is a different server, its serverInfo is expected to differ). Prints one
line per difference: `- path: direct-value` (lost through the gateway), `+ path: gateway-value`
(added by the gateway), `~ path: direct -> gateway` (changed).
"""
import argparse
import json
import re


def strip(record, prefix):
    pre = f"{prefix}_"
    def bare(n):
        return n[len(pre):] if prefix and n.startswith(pre) else n
    out = json.loads(json.dumps(record))
    for t in out.get("tools", []) or []:
        t["name"] = bare(t["name"])
    out["tools"] = {t["name"]: t for t in out.get("tools", []) or []}
    out["calls"] = {bare(k): v for k, v in (out.get("calls") or {}).items()}
    text = json.dumps(out)
    text = re.sub(r"progressToken [0-9a-z\-\"\\]+\)", "progressToken <masked>)", text)
    return json.loads(text)


def diff(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else k
            if k not in b:
                out.append(("-", p, a[k], None))
            elif k not in a:
                out.append(("+", p, None, b[k]))
            else:
                diff(a[k], b[k], p, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(("~", path, a, b))


def short(v, n=160):
    s = json.dumps(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("direct")
    ap.add_argument("gateway")
    ap.add_argument("--prefix", default="conf")
    ap.add_argument("--out")
    a = ap.parse_args()
    d = strip(json.load(open(a.direct)), a.prefix)
    g = strip(json.load(open(a.gateway)), a.prefix)
    d.pop("url", None), g.pop("url", None)
    init = [], []
    diffs = []
    diff(d.pop("initialize", None), g.pop("initialize", None), "initialize", init[0])
    diff(d, g, "", diffs)
    print(f"client: {d.get('client')}")
    print("initialize (expected to differ: the gateway is its own server):")
    for op, p, x, y in init[0]:
        print(f"  {op} {p}: " + (short(x) if op == "-" else short(y) if op == "+" else f"{short(x)} -> {short(y)}"))
    print(f"tool list and calls: {len(diffs)} difference(s)")
    for op, p, x, y in diffs:
        print(f"  {op} {p}: " + (short(x) if op == "-" else short(y) if op == "+" else f"{short(x)} -> {short(y)}"))
    if a.out:
        json.dump({"initialize": init[0], "diffs": diffs}, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    main()
