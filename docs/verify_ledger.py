#!/usr/bin/env python3
"""Recompute every hash and link of an mcp-ledger SQLite ledger, without mcp-ledger.

Usage: python3 verify_ledger.py LEDGER.db   (exit 0 intact, 1 tampered, 2 could not check)
Specification: docs/ledger-format.md. Python 3.8+ standard library only.
"""
import decimal, hashlib, json, sqlite3, sys

def number(x):  # RFC 8785 section 3.2.2.3: numbers are IEEE 754 doubles, printed the ECMAScript way
    x = float(x)
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    _, digits, exp = decimal.Decimal(repr(abs(x))).as_tuple()  # repr: the shortest round-trip digits
    d = "".join(map(str, digits)).rstrip("0")
    n = exp + len(digits)  # abs(x) == 0.<d> * 10**n
    if len(d) <= n <= 21:
        s = d + "0" * (n - len(d))
    elif 0 < n <= 21:
        s = d[:n] + "." + d[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * -n + d
    else:
        s = d[0] + ("." + d[1:] if len(d) > 1 else "") + "e" + ("+" if n > 0 else "-") + str(abs(n - 1))
    return ("-" if x < 0 else "") + s

def jcs(v):  # RFC 8785 canonical JSON of a value parsed by json.loads
    if isinstance(v, dict):  # members sorted by the UTF-16 code units of their names
        return "{" + ",".join(jcs(k) + ":" + jcs(v[k]) for k in sorted(v, key=lambda k: k.encode("utf-16-be"))) + "}"
    if isinstance(v, list):
        return "[" + ",".join(map(jcs, v)) + "]"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return number(v)
    return json.dumps(v, ensure_ascii=False)  # strings, true, false, null: JCS escapes exactly like this

COLUMNS = ["chain_id", "seq", "event_id", "event_type", "timestamp", "session_id", "agent", "server", "data", "prev_hash"]

def verify(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = db.execute(f"SELECT {', '.join(COLUMNS)}, hash FROM events ORDER BY chain_id, seq, event_id")
    chain, expected, prev, count, bad, heads = None, 1, "0" * 64, 0, [], {}
    for row in rows:
        event, stored = dict(zip(COLUMNS, row)), row[-1]
        event["data"] = json.loads(event["data"])  # hash the JSON value, never the stored text
        if event["chain_id"] != chain:
            chain, expected, prev = event["chain_id"], 1, "0" * 64
        problems = []
        if event["seq"] != expected:
            problems.append(f"expected seq {expected}")
        if hashlib.sha256(jcs(event).encode("utf-8")).hexdigest() != stored:
            problems.append("contents do not match the stored hash")
        elif event["prev_hash"] != prev:
            problems.append("prev_hash is not the hash of the event before it")
        for problem in problems:
            bad.append(event["seq"])
            print(f"chain {chain} seq {event['seq']} (event {event['event_id']}): {problem}")
        expected, prev, count, heads[chain] = max(expected, event["seq"] + 1), stored, count + 1, (event["seq"], stored)
    for name, (seq, head) in heads.items():
        print(f"chain {name}: head seq {seq}, hash {head}")
    if bad:
        print(f"TAMPERED: {len(set(bad))} bad event(s) among {count}; bad seqs: {', '.join(map(str, sorted(set(bad))))}")
        return 1
    print(f"intact: {count} events, every hash and link recomputed")
    return 0

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: verify_ledger.py LEDGER.db", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(verify(sys.argv[1]))
    except Exception as error:  # unreadable file, missing table, invalid JSON: not a verdict
        print(f"could not check {sys.argv[1]}: {error}", file=sys.stderr)
        sys.exit(2)
