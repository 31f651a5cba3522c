#!/usr/bin/env python3
"""Check an mcp-ledger evidence bundle (`mcp-ledger export --bundle DIR`) with nothing from mcp-ledger.

    python3 verify_bundle.py DIR

Recomputes every event hash and link and checks every inclusion proof against the root of
DIR/checkpoint.note. It does NOT check the note's Ed25519 signature: do that with OpenSSL as
docs/verification.md shows. Exit status: 0 intact, 1 tampered, 2 could not check.
Python 3.8 or later, standard library only; needs verify_ledger.py next to it (for JCS).
"""
import base64, hashlib, json, pathlib, sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from verify_ledger import COLUMNS, jcs  # noqa: E402

H = lambda *parts: hashlib.sha256(b"".join(parts)).digest()


def root_from_proof(leaf, index, size, path):
    """RFC 9162 section 2.1.3.2: the root that an inclusion path leads to (None if malformed)."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = H(b"\x01", p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = H(b"\x01", r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def verify(d):
    d = pathlib.Path(d)
    read_lines = lambda name: [json.loads(l) for l in open(d / name, encoding="utf-8") if l.strip()]
    events = read_lines("events.jsonl")
    anchor = d / "anchor_event.json"
    chain = ([json.loads(anchor.read_text("utf-8"))] if anchor.exists() else []) + events
    proofs = read_lines("proofs.jsonl")
    body = open(d / "checkpoint.note", encoding="utf-8").read().split("\n\n")[0].split("\n")
    size, root = int(body[1]), base64.b64decode(body[2])
    bad, prev = [], None
    for event, proof in zip(chain, proofs + [None] * (len(chain) - len(proofs))):
        name = f"event {event['event_id']} (seq {event['seq']})"
        preimage = jcs({c: event[c] for c in COLUMNS}).encode("utf-8")
        if hashlib.sha256(preimage).hexdigest() != event["hash"]:
            bad.append(f"{name}: contents do not match its hash (modified)")
        if prev is None and event["seq"] == 1 and event["prev_hash"] != "0" * 64:
            bad.append(f"{name}: does not start the chain")
        if prev is not None and (event["seq"] != prev["seq"] + 1 or event["prev_hash"] != prev["hash"]):
            bad.append(f"{name}: does not link to the event before it (missing or broken link)")
        prev = event
        leaf = H(b"\x00", bytes.fromhex(event["hash"]))
        if (proof is None or proof["seq"] != event["seq"] or proof["tree_size"] != size
                or root_from_proof(leaf, event["seq"] - 1, size, [bytes.fromhex(p) for p in proof["proof"]]) != root):
            bad.append(f"{name}: its inclusion proof does not lead to the checkpoint root")
    if chain and chain[0]["seq"] != 1 and not anchor.exists():
        bad.append("the range does not start at seq 1 and anchor_event.json is missing")
    for line in bad:
        print(line)
    if bad or not events or len(proofs) != len(chain):
        print(f"TAMPERED: {len(bad)} finding(s); {len(events)} events, {len(proofs)} proofs")
        return 1
    print(f"intact: {len(events)} events (seqs {events[0]['seq']}..{events[-1]['seq']}), every hash, "
          f"link and inclusion proof checks out against the root of tree size {size}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: verify_bundle.py DIR", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(verify(sys.argv[1]))
    except Exception as error:  # missing file, invalid JSON or note: no verdict
        print(f"could not check {sys.argv[1]}: {error}", file=sys.stderr)
        sys.exit(2)
