"""The evidence ledger: an append-only chain, one entry per event in a call's life (recorded,
re-classified, held, released, erased, expired, evicted, exported, offloaded, and offload-deleted
when the copy of an erased or expired call is removed from the offload target, sent-to-crm when
the CRM took the call's webhook event). The `recorded` entry carries the call's purpose, legal
basis and end of retention as they were when it was recorded; `reclassified`, the new ones.

Each entry carries the hash of the one before, the recording's SHA-256 where there is one, a
sequence number and the boot's monotonic clock, so order is provable even when the wall clock was
wrong. A chain kept only on the device can be recomputed by whoever holds the device: exports sign
entries with the device key, and the chain head is meant to be kept off the box too.

The chain has a file of its own, `ledger/ledger.db`, that only the data folder's owner (the
recorder's user) writes; the web UI, which faces the LAN, reads it. Whoever changes the catalogue
records the event in the catalogue's `ledger_queue`, in the transaction of the change, and the
ledger's writer (`appliance.store.ledgerkeeper`) moves it onto the chain: so a change and its
entry are never one without the other, and the web UI cannot rewrite what the chain says.
"""

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from appliance.clock import iso_utc
from appliance.store.snapshot import snapshot

GENESIS = "0" * 64
FIELDS = ("seq", "at", "boot_id", "mono_ns", "event", "call_id", "sha256", "detail", "prev_hash")
LEDGER_DIR = "ledger"
LEDGER_NAME = "ledger.db"
# What an event records, in the catalogue's queue and on the chain.
EVENT_FIELDS = ("at", "boot_id", "mono_ns", "event", "call_id", "sha256", "detail")
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger (
        seq INTEGER PRIMARY KEY, at TEXT NOT NULL, boot_id TEXT NOT NULL, mono_ns INTEGER NOT NULL,
        event TEXT NOT NULL, call_id INTEGER, sha256 TEXT, detail TEXT,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ledger_call ON ledger (call_id)",
    """CREATE TRIGGER IF NOT EXISTS ledger_append_only_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS ledger_append_only_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    # How far the catalogue's queue has been moved onto the chain (`queue_id`), and whether the
    # chain the catalogue held before it had a file of its own was brought over (`imported`).
    "CREATE TABLE IF NOT EXISTS progress (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


BOOT_ID = _boot_id()


def ledger_path(data_dir: Path) -> Path:
    """Where a data folder's ledger is."""
    return Path(data_dir) / LEDGER_DIR / LEDGER_NAME


def entry_hash(entry: dict) -> str:
    """The hash of a ledger entry: SHA-256 of its fields (but `hash`) as canonical JSON."""
    canonical = json.dumps([entry[name] for name in FIELDS], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def chained(event: dict, last: tuple[int, str] | None) -> dict:
    """The entry that puts `event` (its EVENT_FIELDS) on a chain whose last entry is `last`
    ((seq, hash), or None for an empty chain)."""
    entry = {"seq": last[0] + 1 if last else 1, **{name: event[name] for name in EVENT_FIELDS},
             "prev_hash": last[1] if last else GENESIS}
    entry["hash"] = entry_hash(entry)
    return entry


def record(db: sqlite3.Connection, event: str, call_id: int | None = None, sha256: str | None = None,
           detail: str | None = None) -> None:
    """Record an event for the ledger, in the catalogue's write transaction of the change it is
    about (`db`): it reaches the chain when the transaction is committed."""
    values = {"at": iso_utc(time.time()), "boot_id": BOOT_ID, "mono_ns": time.monotonic_ns(), "event": event,
              "call_id": call_id, "sha256": sha256, "detail": detail}
    db.execute(f"INSERT INTO ledger_queue ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
               list(values.values()))
    db.ledger_recorded = True


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
    """The latest entry (`db`: a connection of `Ledger.read`): keep its hash off the device to
    anchor the chain."""
    row = db.execute("SELECT * FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    return dict(row) if row else None


class Ledger:
    """A data folder's ledger, to read: through a read-only connection of the reading thread (an
    empty chain while the file is not written yet)."""

    def __init__(self, data_dir: Path):
        self.path = ledger_path(Path(data_dir).absolute())
        self._local = threading.local()

    @contextmanager
    def read(self):
        """One consistent view of the chain: yields a read-only connection inside a read
        transaction (short: the ledger's writer waits for it)."""
        with snapshot(self._reader()) as db:
            yield db

    def entries_of(self, call_id: int) -> tuple[list[dict], dict | None]:
        """A call's entries, and the chain's head, from one view."""
        with self.read() as db:
            return ([dict(e) for e in db.execute("SELECT * FROM ledger WHERE call_id = ? ORDER BY seq", [call_id])],
                    head(db))

    def entries(self, batch: int = 10_000):
        """Every entry in order, read `batch` at a time, each batch in a short view of its own (the
        chain only grows: together they are the chain as it was at the last batch)."""
        after = 0
        while True:
            with self.read() as db:
                rows = [dict(e) for e in db.execute("SELECT * FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?",
                                                    [after, batch])]
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1]["seq"]

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None and (db.written or not self.path.exists()):
            return db
        if db is not None:
            db.close()
        if self.path.exists():
            db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=10,
                                 check_same_thread=False, factory=_Reader)
            db.written = True
        else:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False, factory=_Reader)
            for statement in SCHEMA:
                db.execute(statement)
            db.written = False
        db.row_factory = sqlite3.Row
        self._local.db = db
        return db


class _Reader(sqlite3.Connection):
    written = False     # False: a stand-in for a ledger not written yet (an empty chain)
