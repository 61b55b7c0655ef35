"""The evidence ledger: an append-only chain in the catalogue, one entry per event in a call's life
(recorded, re-classified, held, released, erased, expired, evicted, exported, offloaded, and
offload-deleted when the copy of an erased or expired call is removed from the offload target,
sent-to-crm when the CRM took the call's webhook event). The `recorded` entry carries the call's
purpose, legal basis and end of retention as they were when it was recorded; `reclassified`, the
new ones.

Each entry carries the hash of the one before, the recording's SHA-256 where there is one, a
sequence number and the boot's monotonic clock, so order is provable even when the wall clock was
wrong. A chain kept only on the device can be recomputed by whoever holds the device: exports sign
entries with the device key, and the chain head is meant to be kept off the box too.
"""

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from appliance.clock import iso_utc

GENESIS = "0" * 64
FIELDS = ("seq", "at", "boot_id", "mono_ns", "event", "call_id", "sha256", "detail", "prev_hash")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


BOOT_ID = _boot_id()


def entry_hash(entry: dict) -> str:
    """The hash of a ledger entry: SHA-256 of its fields (but `hash`) as canonical JSON."""
    canonical = json.dumps([entry[name] for name in FIELDS], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def append(db: sqlite3.Connection, event: str, call_id: int | None = None, sha256: str | None = None,
           detail: str | None = None) -> dict:
    """Append an entry; call inside the write transaction of the change it records."""
    last = db.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    entry = {"seq": (last[0] + 1) if last else 1, "at": iso_utc(time.time()), "boot_id": BOOT_ID,
             "mono_ns": time.monotonic_ns(), "event": event, "call_id": call_id, "sha256": sha256,
             "detail": detail, "prev_hash": last[1] if last else GENESIS}
    entry["hash"] = entry_hash(entry)
    db.execute(f"INSERT INTO ledger ({', '.join(entry)}) VALUES ({', '.join('?' * len(entry))})",
               list(entry.values()))
    return entry


def check_entry(entry: dict) -> str | None:
    """What is wrong with one entry on its own (its hash), or None."""
    if entry_hash(entry) != entry["hash"]:
        return f"ledger entry {entry['seq']} ({entry['event']}, call {entry['call_id']}) does not match its hash"
    return None


def check_chain(rows) -> list[str]:
    """Problems found walking the whole chain in order: altered entries, broken or missing links."""
    problems, previous, expected_seq = [], GENESIS, 1
    for entry in rows:
        entry = dict(entry)
        if entry["seq"] != expected_seq:
            problems.append(f"ledger entries {expected_seq} to {entry['seq'] - 1} are missing")
        if (problem := check_entry(entry)) is not None:
            problems.append(problem)
        if entry["prev_hash"] != previous:
            problems.append(f"ledger entry {entry['seq']} does not follow entry {entry['seq'] - 1}")
        previous, expected_seq = entry["hash"], entry["seq"] + 1
    return problems


def head(db: sqlite3.Connection) -> dict | None:
    """The latest entry: keep its hash off the device to anchor the chain."""
    row = db.execute("SELECT * FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    return dict(row) if row else None
