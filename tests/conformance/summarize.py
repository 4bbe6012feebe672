#!/usr/bin/env python3
"""Compare conformance-suite results: direct (upstream) vs via gateway.

    summarize.py --scenarios FILE --column NAME=DIR [--column ...] --reference direct --compare gateway
                 --allowlist not-proxied.txt --json OUT.json

Each DIR is a `conformance server -o DIR` output: one `server-<scenario>-<timestamp>/checks.json`
per scenario. A scenario's status in a column:
  pass      no FAILURE check (the suite's own criterion), and at least as many SUCCESS checks as in
            the reference column
  degraded  no FAILURE check, but fewer SUCCESS checks than the reference (e.g. a SUCCESS became a
            WARNING or INFO because a feature was missing); counted as not passing
  fail      at least one FAILURE check
  missing   no result (the suite did not run it, or crashed)
Exit status 1 when a scenario passing in the reference column does not pass in the compared
column and is not listed in the allowlist; 0 otherwise. Stale allowlist entries (listed, but
passing now) are reported, not failed.
"""
import argparse
import json
import os
import re
import sys


def load_column(directory, scenarios):
    results = {}
    if not os.path.isdir(directory):
        return results
    for name in sorted(os.listdir(directory)):
        for s in scenarios:
            if re.fullmatch(rf"server-{re.escape(s)}-\d{{4}}-.*", name):
                path = os.path.join(directory, name, "checks.json")
                try:
                    checks = json.load(open(path))
                except (OSError, ValueError):
                    continue
                results[s] = checks  # the latest (names sort by timestamp) wins
    return results


def counts(checks):
    c = {"SUCCESS": 0, "FAILURE": 0, "WARNING": 0, "INFO": 0, "SKIPPED": 0}
    for ch in checks:
        c[ch.get("status", "INFO")] = c.get(ch.get("status", "INFO"), 0) + 1
    return c


def status(checks, reference_checks):
    if checks is None:
        return "missing"
    c = counts(checks)
    if c["FAILURE"]:
        return "fail"
    if reference_checks is not None and c["SUCCESS"] < counts(reference_checks)["SUCCESS"]:
        return "degraded"
    return "pass"


def load_allowlist(path):
    allowed = {}
    if path and os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition(" ")
            allowed[name] = reason.strip()
    return allowed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", required=True)
    ap.add_argument("--column", action="append", default=[])
    ap.add_argument("--reference", default="direct")
    ap.add_argument("--compare", default="gateway")
    ap.add_argument("--allowlist")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    scenarios = [l.strip() for l in open(a.scenarios) if l.strip()]
    columns = {}
    for spec in a.column:
        name, _, directory = spec.partition("=")
        columns[name] = load_column(directory, scenarios)
    allowed = load_allowlist(a.allowlist)
    ref = columns.get(a.reference, {})

    rows, regressions, stale = [], [], []
    for s in scenarios:
        row = {"scenario": s}
        for name, res in columns.items():
            checks = res.get(s)
            row[name] = {
                "status": status(checks, None if name == a.reference else ref.get(s)),
                "checks": counts(checks) if checks is not None else None,
                "failures": [
                    {"id": c.get("id"), "error": c.get("errorMessage")}
                    for c in (checks or []) if c.get("status") == "FAILURE"
                ],
                "warnings": [
                    {"id": c.get("id"), "error": c.get("errorMessage")}
                    for c in (checks or []) if c.get("status") == "WARNING"
                ],
            }
        if a.compare in columns:
            ref_ok = row[a.reference]["status"] == "pass"
            cmp_ok = row[a.compare]["status"] == "pass"
            row["allowlisted"] = allowed.get(s)
            if ref_ok and not cmp_ok:
                (regressions if s not in allowed else []).append(s)
            if s in allowed and cmp_ok:
                stale.append(s)
        rows.append(row)

    names = list(columns)
    width = max(len(s) for s in scenarios) + 2
    header = f"{'scenario':<{width}}" + "".join(f"{n:<22}" for n in names)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for n in names:
            r = row[n]
            c = r["checks"]
            detail = f" ({c['SUCCESS']}/{c['SUCCESS'] + c['FAILURE']}" + (f", {c['WARNING']}w" if c["WARNING"] else "") + ")" if c else ""
            cells.append(f"{r['status'] + detail:<22}")
        mark = ""
        if a.compare in columns and row[a.reference]["status"] == "pass" and row[a.compare]["status"] != "pass":
            mark = "  [allowlisted]" if row.get("allowlisted") is not None else "  [REGRESSION]"
        print(f"{row['scenario']:<{width}}" + "".join(cells) + mark)
    totals = {n: sum(1 for r in rows if r[n]["status"] == "pass") for n in names}
    print("-" * len(header))
    print(f"{'passing':<{width}}" + "".join(f"{f'{totals[n]}/{len(rows)}':<22}" for n in names))

    summary = {
        "reference": a.reference, "compare": a.compare, "scenarios": rows, "passing": totals,
        "total": len(rows), "regressions_not_allowlisted": regressions, "stale_allowlist_entries": stale,
    }
    with open(a.json, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nJSON summary: {a.json}")
    if stale:
        print("allowlisted but passing now (remove from not-proxied.txt): " + ", ".join(stale))
    if regressions:
        print("FAILED: passing directly but not through the gateway, and not in not-proxied.txt: " + ", ".join(regressions))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
