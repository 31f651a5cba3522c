#!/usr/bin/env python3
"""Recompute every hash and link of an mcp-ledger ledger, with nothing from mcp-ledger.

    python3 verify_ledger.py LEDGER.db       an SQLite ledger file
    python3 verify_ledger.py EVENTS.jsonl    one event object per line, in (chain_id, seq) order
                                             ("-" reads those lines from standard input)

Exit status: 0 intact, 1 tampered (the bad seqs are printed), 2 could not check.
The format is specified in docs/ledger-format.md. Python 3.8 or later, standard library only.
"""
import decimal, hashlib, json, pathlib, sqlite3, sys

COLUMNS = ["chain_id", "seq", "event_id", "event_type", "timestamp",
           "session_id", "agent", "server", "data", "prev_hash"]  # every column but hash


def number(x):
    """RFC 8785 number: the value as an IEEE 754 double, written as ECMAScript's Number toString."""
    x = float(x)
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    _, digits, exp = decimal.Decimal(repr(abs(x))).as_tuple()  # repr has the shortest digits
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


def jcs(v):
    """RFC 8785 canonical JSON text of a value as json.loads returns it."""
    if isinstance(v, dict):  # member names sorted by their UTF-16 code units
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs(k) + ":" + jcs(v[k]) for k in keys) + "}"
    if isinstance(v, list):
        return "[" + ",".join(map(jcs, v)) + "]"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return number(v)
    return json.dumps(v, ensure_ascii=False)  # strings, true, false, null: escaped as JCS wants


def events(path):
    if path == "-" or path.endswith((".jsonl", ".ndjson")):
        lines = sys.stdin if path == "-" else open(path, encoding="utf-8")
        for line in lines:
            if line.strip():
                yield json.loads(line)  # e.g. psql's row_to_json(e): data is already JSON
        return
    db = sqlite3.connect(pathlib.Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    query = f"SELECT {', '.join(COLUMNS)}, hash FROM events ORDER BY chain_id, seq, event_id"
    for row in db.execute(query):
        event = dict(zip(COLUMNS + ["hash"], row))
        event["data"] = json.loads(event["data"])  # hash the JSON value, never the stored text
        yield event


def verify(path):
    chain, expected, prev, count, bad, heads = None, 1, "0" * 64, 0, set(), {}
    for event in events(path):
        count += 1
        seq, stored = event["seq"], event["hash"]
        if event["chain_id"] != chain:  # every chain starts at seq 1 after 64 zeros
            chain, expected, prev = event["chain_id"], 1, "0" * 64
        problems = []
        if seq < expected:
            problems.append("a second event with this seq (inserted)")
        elif seq > expected:
            gap = f"seq {expected}" if seq - 1 == expected else f"seqs {expected}..{seq - 1}"
            problems.append(f"{gap} missing before it (deleted)")
        preimage = jcs({name: event[name] for name in COLUMNS}).encode("utf-8")
        if hashlib.sha256(preimage).hexdigest() != stored:
            problems.append("contents do not match its hash (modified or moved)")
        elif seq == expected and event["prev_hash"] != prev:
            problems.append("prev_hash is not the hash of the event before it (broken link)")
        for problem in problems:
            print(f"chain {chain} seq {seq} (event {event['event_id']}): {problem}")
            bad.add((chain, seq))
        if seq >= expected:  # a repeated seq does not move the chain on
            expected, prev, heads[chain] = seq + 1, stored, (seq, stored)
    for name, (seq, head) in heads.items():
        print(f"chain {name}: head seq {seq}, hash {head}")
    if bad:
        seqs = ", ".join(f"{c}/{s}" for c, s in sorted(bad))
        print(f"TAMPERED: {len(bad)} bad event(s) among {count}; bad seqs (chain/seq): {seqs}")
        return 1
    print(f"intact: {count} events; every hash and link recomputed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: verify_ledger.py LEDGER.db | EVENTS.jsonl | -", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(verify(sys.argv[1]))
    except Exception as error:  # unreadable file, no events table, invalid JSON: no verdict
        print(f"could not check {sys.argv[1]}: {error}", file=sys.stderr)
        sys.exit(2)
