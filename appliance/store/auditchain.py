"""The audit trail's hash chain: who listened to, downloaded, exported, held or erased what cannot
be rewritten or deleted unnoticed (`callrec verify` names the entry).

Each entry carries the hash of the one before and a keyed hash (HMAC-SHA256, under a key derived
from the device key) of its detail, and its own hash covers its fields with those two instead of
the detail itself. An erasure may replace a person's number in a detail by `[erased: REFERENCE]`
(see `appliance.store.erasure`): the chain still holds, and such a detail is accepted when its
reference is one of the ledger's erasures. The keyed hash keeps the erased number from being
tested against the chain by whoever has only a copy of the catalogue.

Entries written before the chain existed are chained by the first write after it (migration 14).
"""

import hashlib
import hmac
import json
import re
import time

from appliance.clock import iso_utc

GENESIS = "0" * 64
KEY_LABEL = b"callrec audit detail"
FIELDS = ("id", "at", "actor", "action", "call_id", "detail_mac", "address", "prev_hash")
ERASED = re.compile(r"\[erased: (E-\d{8}-[0-9a-f]{6})\]")


def detail_mac(key: bytes, detail: str | None) -> str | None:
    """The keyed hash of a detail (None for none)."""
    return None if detail is None else hmac.new(key, detail.encode(), hashlib.sha256).hexdigest()


def entry_hash(entry: dict) -> str:
    """An entry's hash: SHA-256 of its chained fields as canonical JSON."""
    return hashlib.sha256(json.dumps([entry[name] for name in FIELDS], separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def append(db, key: bytes, actor: str, action: str, call_id: int | None, detail: str | None,
           address: str | None) -> None:
    """Add an entry at the chain's end, in `db`'s write transaction (chaining first any entry
    written before the chain existed)."""
    previous = _chain_unchained(db, key)
    entry = {"at": iso_utc(time.time()), "actor": actor, "action": action, "call_id": call_id,
             "detail_mac": detail_mac(key, detail), "address": address, "prev_hash": previous}
    entry["id"] = db.execute("INSERT INTO audit (at, actor, action, call_id, detail, address, detail_mac, prev_hash) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [entry["at"], actor, action, call_id, detail, address, entry["detail_mac"],
                              previous]).lastrowid
    db.execute("UPDATE audit SET hash = ? WHERE id = ?", [entry_hash(entry), entry["id"]])


def _chain_unchained(db, key: bytes) -> str:
    """Chain the entries that have no hash yet (written before migration 14); return the hash
    of the chain's last entry."""
    last = db.execute("SELECT hash FROM audit WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
    previous = last[0] if last else GENESIS
    for row in db.execute("SELECT * FROM audit WHERE hash IS NULL ORDER BY id").fetchall():
        entry = {**dict(row), "detail_mac": detail_mac(key, row["detail"]), "prev_hash": previous}
        previous = entry_hash(entry)
        db.execute("UPDATE audit SET detail_mac = ?, prev_hash = ?, hash = ? WHERE id = ?",
                   [entry["detail_mac"], entry["prev_hash"], previous, row["id"]])
    return previous


def check(rows, key: bytes, erasures: set[str]) -> list[str]:
    """Problems found walking the audit trail in order: edited entries (a detail redacted by one
    of the `erasures`' references excepted), deleted ones, broken links."""
    problems, previous, expected_id = [], GENESIS, None
    for row in rows:
        entry = dict(row)
        if entry["hash"] is None:
            continue                    # not chained yet: nothing was written since migration 14
        if expected_id is not None and entry["id"] != expected_id:
            problems.append(f"audit entries {expected_id} to {entry['id'] - 1} are missing")
        what = f"audit entry {entry['id']} ({entry['action']}, {entry['at']})"
        if entry_hash(entry) != entry["hash"]:
            problems.append(f"{what} was changed")
        elif entry["prev_hash"] != previous:
            problems.append(f"{what} does not follow the entry before it (one was deleted or changed)")
        elif detail_mac(key, entry["detail"]) != entry["detail_mac"] and not _redacted(entry["detail"], erasures):
            problems.append(f"{what}: its detail was changed")
        previous, expected_id = entry["hash"], entry["id"] + 1
    return problems


def _redacted(detail: str | None, erasures: set[str]) -> bool:
    """Whether a detail was changed by erasures of the ledger (and only by them, as far as can be
    told: the rest of the text is not covered once a number was taken out)."""
    references = ERASED.findall(detail or "")
    return bool(references) and all(reference in erasures for reference in references)
