"""The webhook's outbox: the events not yet taken by the receiver, in the catalogue's `outbox`
table (migration 11), so that a restart loses none. All SQL on that table is here.

A row is one event: its delivery id (the `X-Callrec-Delivery` UUID), its body exactly as it is
sent, how many attempts failed so far, and when the next one is due. Rows are delivered oldest
first (by `id`, which AUTOINCREMENT never gives twice) and deleted once their fate is known.
Bodies carry personal data (numbers, contact names): rows are deleted, never kept as a history,
and the catalogue overwrites deleted pages (`secure_delete`).
"""

import json
import time
from dataclasses import dataclass
from datetime import datetime

from appliance.clock import iso_utc
from appliance.store import ledger


@dataclass(frozen=True)
class Entry:
    """One waiting event. `next_attempt_at` is in epoch seconds (None: due at once)."""

    id: int
    delivery: str
    body: str
    attempts: int
    created_at: str
    next_attempt_at: float | None


class Outbox:
    """The outbox table of a `Catalogue`. Each method is one short transaction (or one read
    snapshot); sqlite3 errors (a locked or failing catalogue) are raised to the caller."""

    def __init__(self, catalogue):
        self.catalogue = catalogue

    def add(self, delivery: str, body: str, keep: int | None = None) -> int:
        """Append an event under `delivery` (its UUID) with `body` (the JSON text as it will be
        sent). With `keep`, the oldest rows are deleted first so that at most `keep` wait,
        this one included; returns how many were deleted that way."""
        with self.catalogue.transaction() as db:
            dropped = 0
            if keep is not None:
                waiting = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                if waiting >= keep:
                    dropped = db.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        [waiting - keep + 1]).rowcount
            self.put(db, delivery, body)
        return dropped

    @staticmethod
    def put(db, delivery: str, body: str) -> None:
        """In `db`'s transaction: append an event (for a writer that changes the catalogue and
        tells the receiver in one go, as an erasure does)."""
        db.execute("INSERT INTO outbox (delivery, created_at, body) VALUES (?, ?, ?)",
                   [delivery, iso_utc(time.time()), body])

    def next(self) -> Entry | None:
        """The oldest waiting event, or None when the outbox is empty."""
        with self.catalogue.read() as db:
            row = db.execute("SELECT id, delivery, body, attempts, created_at, next_attempt_at "
                             "FROM outbox ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return Entry(row[0], row[1], row[2], row[3], row[4], _epoch(row[5]))

    def attempted(self, entry_id: int, next_attempt_at: float) -> None:
        """Count one more failed attempt of an event, and note when the next one is due (epoch
        seconds). An event deleted meanwhile is left alone."""
        with self.catalogue.transaction() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
                       [iso_utc(next_attempt_at), entry_id])

    def done(self, entry_id: int, delivered: bool = False) -> None:
        """Delete an event whose fate is known (delivered, refused or given up). Deleting one that
        is gone already is not an error. A call's event `delivered` marks the call as sent to the
        CRM (`crm_sent_at`, and a `sent-to-crm` ledger entry): a customer's access report says so."""
        with self.catalogue.transaction() as db:
            row = db.execute("SELECT body FROM outbox WHERE id = ?", [entry_id]).fetchone()
            db.execute("DELETE FROM outbox WHERE id = ?", [entry_id])
            call_id = _call_of(row[0]) if delivered and row is not None else None
            if call_id is not None:
                call = db.execute("SELECT sha256 FROM calls WHERE id = ?", [call_id]).fetchone()
                if call is not None:
                    db.execute("UPDATE calls SET crm_sent_at = ? WHERE id = ?", [iso_utc(time.time()), call_id])
                    ledger.record(db, "sent-to-crm", call_id, call[0])

    @staticmethod
    def forget(db, texts: list[str]) -> int:
        """In `db`'s transaction: delete the waiting events whose body holds any of `texts` (a
        person's number as written, when they are erased); return how many."""
        return sum(db.execute("DELETE FROM outbox WHERE instr(body, ?) > 0", [text]).rowcount
                   for text in texts if text)

    def count(self) -> int:
        """How many events wait."""
        with self.catalogue.read() as db:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def entries(self) -> list[Entry]:
        """Every waiting event, oldest first (for status pages and tests)."""
        with self.catalogue.read() as db:
            rows = db.execute("SELECT id, delivery, body, attempts, created_at, next_attempt_at "
                              "FROM outbox ORDER BY id").fetchall()
        return [Entry(r[0], r[1], r[2], r[3], r[4], _epoch(r[5])) for r in rows]


def _call_of(body: str) -> int | None:
    """The call a `call.ended` event is about (None for another event)."""
    try:
        event = json.loads(body)
    except ValueError:
        return None
    call_id = event.get("id") if isinstance(event, dict) and event.get("event") == "call.ended" else None
    return call_id if isinstance(call_id, int) else None


def _epoch(text: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 UTC time as `iso_utc` writes it; None if absent or unreadable
    (the event is then due at once)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
