"""The catalogue: one SQLite row per call, in WAL mode with full sync, under schema migrations.

`synchronous=FULL` because NORMAL can roll back a committed row after a power cut, and a call row is
evidence. The recorder and the web UI share this file; each process opens its own connection.
The recorder uses the standard `sqlite3` module: sqlite-utils loads numpy and tabulate with it,
about 23 MB of resident memory that a Raspberry Pi recorder has better use for.
"""

import functools
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.clock import iso_utc
from appliance.errors import CallrecError, StoreError
from appliance.keys import AUDIT_KEY_FILE, shared_key
from appliance.store import auditchain, ledger, ledgerkeeper
from appliance.store.migrations import MIGRATIONS
from appliance.store.personal import DIGIT_FIELD, seal, sealed_call
from appliance.store.sealing import Sealer
from appliance.store.snapshot import snapshot

CATALOGUE_NAME = "catalogue.db"

# The fields of a call that `callrec calls --json` prints, in this order.
CALL_FIELDS = (
    "id", "line", "direction", "number", "started_at", "answered_at", "ended_at", "duration_s",
    "notice_played_at", "notice_sha256", "purpose", "state", "file", "size_bytes", "sha256",
    "format", "sample_rate", "samples", "recording_started_at", "flashes", "capture_errors",
    "overruns", "held", "hold_reason", "clock_synced", "discard_reason", "contact_name", "notes",
    "offloaded_at", "offload_target", "channels", "end_reason", "restricted", "restrict_reason",
    "legal_basis", "retention_end", "crm_sent_at",
)
COLUMNS = frozenset(CALL_FIELDS + ("spool", "number_tag"))
# Set with a change to what a call's offloaded manifest says (notes, purpose, number, name): the
# offloader sends the call again, and its copy at the target says what the box says.
SEND_AGAIN = "offloaded_at = NULL, offload_target = NULL"
STATES = ("recording", "complete", "interrupted", "discarded", "missed")

log = logging.getLogger(__name__)


def _columns(fields: dict) -> list[str]:
    unknown = set(fields) - COLUMNS
    if unknown:
        raise ValueError(f"not a column of calls: {', '.join(sorted(unknown))}")
    return list(fields)


@dataclass(frozen=True)
class CallFilter:
    """Which calls: a field left empty does not filter. Times are ISO 8601 UTC, `since` inclusive
    and `until` exclusive; `text` is looked for in the number, the notes and the contact's name."""

    lines: tuple[str, ...] | None = None    # only the calls of these lines (None: every line)
    line: str | None = None
    direction: str | None = None
    number: str | None = None
    numbers: tuple[str, ...] | None = None  # any of these numbers (a customer's written forms)
    tags: tuple[str, ...] | None = None     # any of these number tags (a sealed store's numbers)
    purpose: str | None = None
    since: str | None = None
    until: str | None = None
    min_s: float | None = None
    max_s: float | None = None
    flags: tuple[str, ...] = ()             # held, agreement, interrupted
    text: str | None = None

    def sql(self) -> tuple[str, list]:
        """The condition and its parameters."""
        where, params = [], []
        if self.lines is not None:
            where.append(f"line IN ({', '.join('?' * len(self.lines))})" if self.lines else "0")
            params += self.lines
        if self.numbers is not None:
            where.append(f"number IN ({', '.join('?' * len(self.numbers))})" if self.numbers else "0")
            params += self.numbers
        if self.tags is not None:
            where.append(f"number_tag IN ({', '.join('?' * len(self.tags))})" if self.tags else "0")
            params += self.tags
        for column, op, value in (("line", "=", self.line), ("direction", "=", self.direction),
                                  ("number", "=", self.number), ("purpose", "=", self.purpose),
                                  ("started_at", ">=", self.since), ("started_at", "<", self.until),
                                  ("duration_s", ">=", self.min_s), ("duration_s", "<=", self.max_s)):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        where += [FLAGS[flag] for flag in self.flags]
        if self.text:
            like = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(number LIKE ? ESCAPE '\\' OR notes LIKE ? ESCAPE '\\' OR contact_name LIKE ? ESCAPE '\\')")
            params += [like, like, like]
        return " AND ".join(where), params


FLAGS = {"held": "held = 1", "restricted": "restricted = 1", "agreement": "purpose = 'agreement'",
         "interrupted": "state = 'interrupted'"}
AUDIT_FIELDS = ("id", "at", "actor", "action", "call_id", "detail", "address")


@dataclass(frozen=True)
class AuditFilter:
    """Which audit entries: `actor` and `action` match in part, `since`/`until` as in CallFilter."""

    actor: str | None = None
    action: str | None = None
    call_id: int | None = None
    since: str | None = None
    until: str | None = None

    def sql(self) -> tuple[str, list]:
        """The condition and its parameters."""
        where, params = [], []
        for column, op, value in (("actor", "LIKE", self.actor and f"%{self.actor}%"),
                                  ("action", "LIKE", self.action and f"%{self.action}%"),
                                  ("call_id", "=", self.call_id), ("at", ">=", self.since), ("at", "<", self.until)):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        return " AND ".join(where), params


class Catalogue:
    """The calls of one data folder. Writes go through one connection, one `BEGIN IMMEDIATE`
    transaction at a time; reads go through a read-only connection of the reading thread, in a
    snapshot of their own, so a long read never holds up a writer (WAL).

    The events a transaction records for the ledger (`appliance.store.ledger.record`) are put on
    its chain when the transaction is committed: here, where this process may write the ledger,
    or else by `ledger_writer` (the web UI asks the signer); if neither can, they wait in the
    catalogue until a writer comes (the signer moves them at its start and every minute)."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir).absolute() / CATALOGUE_NAME     # readers open it by a file: URI
        self.ledger = ledger.Ledger(self.path.parent)
        self.ledger_writer = None       # asked to write the ledger where this process may not
        self._lock = threading.RLock()
        self._writing = None            # the thread inside a write transaction
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = connect(self.path)
            self.db.data_dir = self.path.parent
            self.db.execute("PRAGMA synchronous = FULL")
            # Erased and expired rows are personal data: overwrite them, don't just unlink pages.
            self.db.execute("PRAGMA secure_delete = ON")
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the catalogue {self.path} is damaged (quick_check: {check})")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the catalogue {self.path}: {exc}") from None
        if ledgerkeeper.may_write(self.path.parent) and ledgerkeeper.behind(self):
            self.keep_ledger()

    def _migrate(self) -> None:
        # The version is read inside the write transaction: the recorder, the web UI and the doctor
        # may open a new catalogue at the same moment, and only the first may migrate it.
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                step(db)
                db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self):
        """Several statements in one write transaction, taken at once (`BEGIN IMMEDIATE`), so that
        concurrent writers wait instead of failing: yields the write connection."""
        with self._lock:
            outer = self._writing is None
            self._writing = threading.get_ident()
            try:
                with _Immediate(self.db):
                    yield self.db
            finally:
                if outer:
                    self._writing = None
                    recorded, self.db.ledger_recorded = self.db.ledger_recorded, False
        if outer and recorded:
            self.keep_ledger()

    def keep_ledger(self) -> bool:
        """Put the events recorded for the ledger on its chain now; False when they wait (why is
        logged: the change they are about is committed either way)."""
        try:
            if ledgerkeeper.may_write(self.path.parent):
                ledgerkeeper.drain(self)
            elif self.ledger_writer is not None:
                self.ledger_writer()
            else:
                return False
            return True
        except (CallrecError, sqlite3.Error, OSError) as exc:     # the signer not running, too
            log.warning("the ledger's new entries wait in the catalogue: %s", exc)
            return False

    def ledger_waiting(self) -> int:
        """How many recorded events wait to be put on the ledger's chain."""
        with self.read() as db:
            return db.execute("SELECT COUNT(*) FROM ledger_queue").fetchone()[0]

    @contextmanager
    def read(self):
        """One consistent snapshot of the catalogue for the calling thread: yields a read-only
        connection inside a read transaction. It takes no lock a writer waits for. Inside this
        thread's own write transaction, yields that one (it sees its own changes)."""
        if self._writing == threading.get_ident():
            yield self.db
            return
        with snapshot(self._reader()) as db:
            yield db

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 timeout=5, check_same_thread=False)
            db.row_factory = sqlite3.Row
            # Kept for the thread's life only: a reader of a thread that ends is closed with it.
            self._local.db = db
        return db

    def add_call(self, **fields) -> int:
        """Insert a call row under a new id, never one given before (even to a call since erased),
        and return that id."""
        fields = sealed_call(self.db.sealer, fields)
        names = _columns(fields)
        sql = (f"INSERT INTO calls (id, {', '.join(names)}) VALUES "
               f"((SELECT value FROM next_ids WHERE name = 'calls'), {', '.join('?' * len(names))})")
        with self.transaction() as db:
            return db.execute(sql, list(fields.values())).lastrowid

    def update_call(self, call_id: int, **fields) -> None:
        """Change some fields of one call in one transaction."""
        fields = sealed_call(self.db.sealer, fields)
        names = _columns(fields)
        sql = f"UPDATE calls SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?"
        with self.transaction() as db:
            if db.execute(sql, [*fields.values(), call_id]).rowcount != 1:
                raise KeyError(call_id)

    def peaks_of(self, call_id: int) -> bytes | None:
        """A call's waveform peaks (see appliance.store.peaks), or None when they were never folded."""
        with self.read() as db:
            row = db.execute("SELECT levels FROM peaks WHERE call_id = ?", [call_id]).fetchone()
        return row[0] if row is not None else None

    def set_peaks(self, call_id: int, levels: bytes) -> None:
        """Keep a call's waveform peaks (folded late, for a call archived before they were)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM calls WHERE id = ? AND file IS NOT NULL", [call_id]).fetchone():
                db.execute("INSERT OR REPLACE INTO peaks (call_id, levels) VALUES (?, ?)", [call_id, levels])

    def add_digit(self, call_id: int, offset_s: float, key: str) -> None:
        """Note a DTMF key heard `offset_s` seconds into a call's recording."""
        with self.transaction() as db:
            db.execute("INSERT INTO digits (call_id, offset_s, key) VALUES (?, ?, ?)",
                       [call_id, round(offset_s, 3), seal(db.sealer, key, DIGIT_FIELD)])

    def add_pause(self, call_id: int, start_s: float, reason: str) -> None:
        """Note that silence stands in for the line from `start_s` seconds into a call's recording."""
        with self.transaction() as db:
            db.execute("INSERT INTO pauses (call_id, start_s, reason) VALUES (?, ?, ?)",
                       [call_id, round(start_s, 3), reason])

    def end_pause(self, call_id: int, end_s: float) -> None:
        """Close a call's open pause at `end_s` seconds into its recording."""
        with self.transaction() as db:
            db.execute("UPDATE pauses SET end_s = ? WHERE call_id = ? AND end_s IS NULL",
                       [round(end_s, 3), call_id])

    def forget_declined(self, call_id: int, keep_number: bool, reason: str = "declined") -> None:
        """Recording was declined (the caller's opt-out, or an objection): the call's keys and
        pauses go, and its row stays as `discarded` with `reason`, without the number unless
        `keep_number`."""
        with self.transaction() as db:
            db.execute("DELETE FROM digits WHERE call_id = ?", [call_id])
            db.execute("DELETE FROM pauses WHERE call_id = ?", [call_id])
            db.execute("DELETE FROM peaks WHERE call_id = ?", [call_id])
            self.update_call(call_id, state="discarded", discard_reason=reason, spool=None,
                             recording_started_at=None, **({} if keep_number else {"number": None}))

    def digits(self, call_id: int) -> list[tuple[float, str]]:
        """The keys heard in a call, as (offset in seconds, key)."""
        with self.read() as db:
            return [tuple(row) for row in db.execute(
                "SELECT offset_s, key FROM digits WHERE call_id = ? ORDER BY offset_s", [call_id])]

    def pauses(self, call_id: int) -> list[tuple[float, float | None, str]]:
        """A call's pauses as (start, end, reason), offsets in seconds into its recording."""
        with self.read() as db:
            return [tuple(row) for row in db.execute(
                "SELECT start_s, end_s, reason FROM pauses WHERE call_id = ? ORDER BY start_s", [call_id])]

    def get_call(self, call_id: int) -> dict:
        """One call row as a dict (raises KeyError when there is no such call)."""
        with self.read() as db:
            row = db.execute("SELECT * FROM calls WHERE id = ?", [call_id]).fetchone()
        if row is None:
            raise KeyError(call_id)
        return dict(row)

    def calls(self, where: str | None = None, params: list | tuple = (), newest_first: bool = False,
              limit: int | None = None) -> list[dict]:
        """Call rows, oldest first (or newest first by start time), optionally filtered by an SQL
        condition with `?` parameters."""
        order = "started_at DESC, id DESC" if newest_first else "id"
        sql = (f"SELECT * FROM calls{f' WHERE {where}' if where else ''} ORDER BY {order}"
               f"{f' LIMIT {int(limit)}' if limit else ''}")
        with self.read() as db:
            return [dict(row) for row in db.execute(sql, list(params))]

    def find(self, number: str | None = None, since: str | None = None, until: str | None = None,
             limit: int = 50) -> list[dict]:
        """The newest calls first, optionally of one number and within [since, until) (ISO 8601
        UTC); every form of this query is served by an index, whatever the catalogue's size."""
        return self.find_calls(CallFilter(number=number, since=since, until=until), limit)

    def find_calls(self, which: "CallFilter", limit: int | None = None, offset: int = 0) -> list[dict]:
        """The calls `which` selects, newest first by start time, `limit` of them from `offset`."""
        where, params = which.sql()
        sql = (f"SELECT * FROM calls{' WHERE ' + where if where else ''} ORDER BY started_at DESC, id DESC"
               f" LIMIT ? OFFSET ?")
        with self.read() as db:
            return [dict(row) for row in db.execute(sql, [*params, -1 if limit is None else limit, offset])]

    def call_starts(self, which: "CallFilter") -> list[str]:
        """The `started_at` of each call `which` selects (for counts per day)."""
        where, params = which.sql()
        with self.read() as db:
            return [row[0] for row in db.execute(f"SELECT started_at FROM calls{' WHERE ' + where if where else ''}",
                                                 params)]

    def size_of(self, call_ids: list[int]) -> int:
        """What the recordings of these calls take, in bytes."""
        with self.read() as db:
            return db.execute(f"SELECT COALESCE(SUM(size_bytes), 0) FROM calls WHERE id IN ({', '.join('?' * len(call_ids))})",
                              call_ids).fetchone()[0]

    def waiting_offload(self) -> tuple[int, str | None]:
        """How many finished recordings are not copied off the box yet, and the oldest one's end."""
        with self.read() as db:
            return tuple(db.execute(
                "SELECT COUNT(*), MIN(COALESCE(ended_at, started_at)) FROM calls "
                "WHERE file IS NOT NULL AND offloaded_at IS NULL AND state != 'recording'").fetchone())

    def status(self, key: str) -> str | None:
        """The value kept under `key` in the status table (the store's and the alarms' state), or None."""
        with self.read() as db:
            row = db.execute("SELECT value FROM status WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def statuses(self, prefix: str) -> dict[str, str]:
        """Every value of the status table whose key starts with `prefix`, by key."""
        with self.read() as db:
            return {row[0]: row[1] for row in db.execute(
                "SELECT key, value FROM status WHERE substr(key, 1, ?) = ? ORDER BY key", [len(prefix), prefix])}

    def set_status(self, key: str, value: str | None) -> None:
        """Keep `value` under `key` in the status table (None deletes it); `since` is when the key
        was first set."""
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM status WHERE key = ?", [key])
            else:
                db.execute("INSERT INTO status (key, value, since) VALUES (?, ?, ?) ON CONFLICT (key) "
                           "DO UPDATE SET value = excluded.value", [key, value, iso_utc(time.time())])

    def set_notes(self, call_id: int, notes: str | None, actor: str, address: str | None = None) -> None:
        """Replace a call's notes (audited); an offloaded call is sent again."""
        with self.transaction() as db:
            db.execute(f"UPDATE calls SET notes = ?, {SEND_AGAIN} WHERE id = ?",
                       [seal(db.sealer, notes, "notes"), call_id])
            audit(db, actor, "notes", call_id, None, address)

    def set_contact_name(self, call_id: int, name: str | None) -> None:
        """Name a call's caller from the contacts."""
        with self.transaction() as db:
            db.execute("UPDATE calls SET contact_name = ? WHERE id = ?", [seal(db.sealer, name, "contact_name"), call_id])

    def untagged(self, limit: int) -> list[tuple[int, str]]:
        """(id, number as stored) of up to `limit` calls whose number has no tag yet, newest first."""
        with self.read() as db:
            return [tuple(row) for row in db.execute(
                "SELECT id, number FROM calls WHERE number_tag IS NULL AND number IS NOT NULL "
                "ORDER BY id DESC LIMIT ?", [limit])]

    def count_untagged(self) -> int:
        """How many calls have a number without a tag (not found by number yet)."""
        with self.read() as db:
            return db.execute("SELECT COUNT(*) FROM calls WHERE number_tag IS NULL AND number IS NOT NULL").fetchone()[0]

    def set_number_tags(self, tags: list[tuple[str, int, str]]) -> None:
        """Keep each (tag, call id, number as stored) in one transaction; a row whose number has
        changed since it was read keeps no tag (it is read again)."""
        if not tags:
            return
        with self.transaction() as db:
            db.executemany("UPDATE calls SET number_tag = ? WHERE id = ? AND number = ?", tags)

    def add_audit(self, actor: str, action: str, call_id: int | None = None, detail: str | None = None,
                  address: str | None = None) -> None:
        """Add an entry to the audit trail in a transaction of its own."""
        with self.transaction() as db:
            audit(db, actor, action, call_id, detail, address)

    def audit_entries(self, which: "AuditFilter", limit: int, offset: int = 0, after_id: int | None = None) -> list[dict]:
        """Audit entries `which` selects: the newest first from `offset`, or, with `after_id`, the
        oldest first after that entry (for a trail streamed in batches)."""
        where, params = which.sql()
        if after_id is not None:
            where, params = " AND ".join(filter(None, [where, "id > ?"])), [*params, after_id]
        order = "id" if after_id is not None else "id DESC"
        with self.read() as db:
            return [dict(row) for row in db.execute(
                f"SELECT {', '.join(AUDIT_FIELDS)} FROM audit{' WHERE ' + where if where else ''} "
                f"ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, 0 if after_id is not None else offset])]

    def ledger_of(self, call_id: int) -> tuple[list[dict], dict | None]:
        """A call's ledger entries, and the chain's head, from one snapshot."""
        return self.ledger.entries_of(call_id)

    def mark_offloaded(self, call_id: int, sha256: str, target: str) -> bool:
        """Note that the recording with `sha256` was copied to `target`; False when the call was
        erased or changed meanwhile (nothing is marked then)."""
        with self.transaction() as db:
            current = db.execute("SELECT sha256 FROM calls WHERE id = ?", [call_id]).fetchone()
            if current is None or current[0] != sha256:
                return False
            db.execute("UPDATE calls SET offloaded_at = ?, offload_target = ? WHERE id = ?",
                       [iso_utc(time.time()), target, call_id])
            ledger.record(db, "offloaded", call_id, sha256, target)
            return True

    def offload_deletions(self, target: str) -> list[dict]:
        """The copies at `target` still to delete (of calls erased or expired on the box)."""
        with self.read() as db:
            return [dict(r) for r in db.execute("SELECT * FROM offload_deletions WHERE target = ? ORDER BY id",
                                                [target])]

    def offload_deleted(self, deletion: dict) -> None:
        """A copy listed by `offload_deletions` is gone from its target."""
        with self.transaction() as db:
            db.execute("DELETE FROM offload_deletions WHERE id = ?", [deletion["id"]])
            ledger.record(db, "offload-deleted", deletion["call_id"], None,
                          f"{deletion['reason']} at {deletion['target']}")

    def checkpoint(self, timeout_s: float = 10.0) -> bool:
        """Copy the write-ahead log into the database file and empty it, so that deleted rows
        (overwritten there: `secure_delete`) leave no copy in the log. A reader in another process
        can hold it up: tried again for up to `timeout_s`. True once done."""
        end = time.monotonic() + timeout_s
        while True:
            with self._lock:
                busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy or time.monotonic() > end:
                return not busy
            time.sleep(0.05)

    def close(self) -> None:
        """Close the connections."""
        with self._lock:
            if (reader := getattr(self._local, "db", None)) is not None:
                reader.close()
                self._local.db = None
            self.db.close()


class WriteConnection(sqlite3.Connection):
    """A catalogue's write connection: it knows its data folder, hence the key of the audit
    chain's detail hashes (read from its file when first needed)."""

    data_dir: Path | None = None
    ledger_recorded = False     # events for the ledger in the open transaction

    @functools.cached_property
    def sealer(self) -> Sealer | None:
        """What seals a person's data written here (None: the store does not seal)."""
        return Sealer.load(self.data_dir)

    @functools.cached_property
    def audit_key(self) -> bytes:
        """The key of the audit trail's detail hashes."""
        return shared_key(self.data_dir, AUDIT_KEY_FILE, auditchain.KEY_LABEL)


def connect(path: Path) -> WriteConnection:
    """A connection to the SQLite file `path` in WAL mode, usable from any thread, in autocommit
    mode, waiting up to 5 s for other writers."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5, factory=WriteConnection)
    db.row_factory = sqlite3.Row
    # Switching a new file to WAL needs it alone for an instant, and SQLite then answers "locked"
    # at once instead of waiting: another process is opening it too (the web UI and the recorder at
    # first boot). Try again for as long as a writer is waited for.
    deadline = time.monotonic() + 5
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return db
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.02)


class _Immediate:
    """`BEGIN IMMEDIATE … COMMIT`, rolled back on error; inside an open transaction, part of it."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.outer = False

    def __enter__(self):
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is not None:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            return False
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            # A commit refused (the disk full) may leave the transaction open: end it, so the
            # next write starts clean and a retry writes the whole step again.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return False


def audit(db, actor: str, action: str, call_id: int | None = None, detail: str | None = None,
          address: str | None = None) -> None:
    """Add an entry to the audit trail: who did what to which call, from where (in the transaction
    of `db`, a catalogue's write connection; chained: see `appliance.store.auditchain`)."""
    auditchain.append(db, db.audit_key, actor, action, call_id, detail, address)


def public_fields(row: dict) -> dict:
    """The user-facing fields of a call row, in the documented order."""
    return {name: row.get(name) for name in CALL_FIELDS}
