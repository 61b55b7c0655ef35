"""The catalogue: one SQLite row per call, in WAL mode with full sync, under schema migrations.

`synchronous=FULL` because NORMAL can roll back a committed row after a power cut, and a call row is
evidence. The recorder and the web UI share this file; each process opens its own connection.
The recorder uses the standard `sqlite3` module: sqlite-utils loads numpy and tabulate with it,
about 23 MB of resident memory that a Raspberry Pi recorder has better use for.
"""

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from appliance.clock import iso_utc
from appliance.errors import StoreError

CATALOGUE_NAME = "catalogue.db"

# The fields of a call that `callrec calls --json` prints, in this order.
CALL_FIELDS = (
    "id", "line", "direction", "number", "started_at", "answered_at", "ended_at", "duration_s",
    "notice_played_at", "notice_sha256", "purpose", "state", "file", "size_bytes", "sha256",
    "format", "sample_rate", "samples", "recording_started_at", "flashes", "capture_errors",
    "overruns", "held", "hold_reason", "clock_synced", "discard_reason", "contact_name", "notes",
    "offloaded_at", "offload_target", "channels", "end_reason",
)
COLUMNS = frozenset(CALL_FIELDS + ("spool",))
COUNTERS = ("flashes", "capture_errors", "overruns")
STATES = ("recording", "complete", "interrupted", "discarded", "missed")


def _migration_1(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            line TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('incoming', 'outgoing', 'unknown')),
            number TEXT,
            started_at TEXT NOT NULL,
            answered_at TEXT,
            ended_at TEXT,
            duration_s REAL,
            notice_played_at TEXT,
            notice_sha256 TEXT,
            purpose TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('recording', 'complete', 'interrupted', 'discarded',
                                                  'missed')),
            file TEXT,
            size_bytes INTEGER,
            sha256 TEXT,
            format TEXT,
            sample_rate INTEGER,
            samples INTEGER,
            recording_started_at TEXT,
            flashes INTEGER NOT NULL DEFAULT 0,
            capture_errors INTEGER NOT NULL DEFAULT 0,
            overruns INTEGER NOT NULL DEFAULT 0,
            spool TEXT
        )"""
    )
    db.execute("CREATE INDEX calls_started_at ON calls (started_at)")
    db.execute("CREATE INDEX calls_state ON calls (state)")
    db.execute("CREATE INDEX calls_number ON calls (number)")


def _migration_2(db: sqlite3.Connection) -> None:
    """Holds, clock state, tombstones, the evidence ledger, the store's status and audit trail."""
    db.execute("ALTER TABLE calls ADD COLUMN held INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE calls ADD COLUMN hold_reason TEXT")
    db.execute("ALTER TABLE calls ADD COLUMN clock_synced INTEGER")
    # What the cleaner asks for: per purpose, the oldest unheld calls; and the oldest unheld files.
    db.execute("CREATE INDEX calls_expiry ON calls (purpose, started_at) WHERE held = 0")
    db.execute("CREATE INDEX calls_eviction ON calls (started_at) WHERE held = 0 AND file IS NOT NULL")
    db.execute("CREATE INDEX calls_file ON calls (file)")
    db.execute("""CREATE TABLE tombstones (
        id INTEGER PRIMARY KEY, call_id INTEGER NOT NULL, deleted_at TEXT NOT NULL,
        reason TEXT NOT NULL)""")
    db.execute("""CREATE TABLE ledger (
        seq INTEGER PRIMARY KEY, at TEXT NOT NULL, boot_id TEXT NOT NULL, mono_ns INTEGER NOT NULL,
        event TEXT NOT NULL, call_id INTEGER, sha256 TEXT, detail TEXT,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""")
    db.execute("CREATE INDEX ledger_call ON ledger (call_id)")
    db.execute("""CREATE TRIGGER ledger_append_only_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""")
    db.execute("""CREATE TRIGGER ledger_append_only_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""")
    db.execute("CREATE TABLE pending_deletions (path TEXT PRIMARY KEY)")
    # The archive's size, kept by triggers in the same transactions as the rows, so the cleaner
    # need not add up a million rows at every pass.
    db.execute("CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO totals VALUES ('archive_bytes', (SELECT COALESCE(SUM(size_bytes), 0) FROM calls))")
    db.execute("""CREATE TRIGGER calls_size_insert AFTER INSERT ON calls WHEN NEW.size_bytes IS NOT NULL
        BEGIN UPDATE totals SET value = value + NEW.size_bytes WHERE name = 'archive_bytes'; END""")
    db.execute("""CREATE TRIGGER calls_size_update AFTER UPDATE OF size_bytes ON calls
        BEGIN UPDATE totals SET value = value - COALESCE(OLD.size_bytes, 0) + COALESCE(NEW.size_bytes, 0)
              WHERE name = 'archive_bytes'; END""")
    db.execute("""CREATE TRIGGER calls_size_delete AFTER DELETE ON calls WHEN OLD.size_bytes IS NOT NULL
        BEGIN UPDATE totals SET value = value - OLD.size_bytes WHERE name = 'archive_bytes'; END""")
    db.execute("CREATE TABLE status (key TEXT PRIMARY KEY, value TEXT NOT NULL, since TEXT NOT NULL)")
    db.execute("""CREATE TABLE audit (
        id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        call_id INTEGER, detail TEXT)""")


def _migration_3(db: sqlite3.Connection) -> None:
    """Digits heard in calls, and why a call was discarded (the caller declined)."""
    db.execute("""CREATE TABLE digits (
        id INTEGER PRIMARY KEY, call_id INTEGER NOT NULL, offset_s REAL NOT NULL, key TEXT NOT NULL)""")
    db.execute("CREATE INDEX digits_call ON digits (call_id)")
    db.execute("ALTER TABLE calls ADD COLUMN discard_reason TEXT")


def _migration_4(db: sqlite3.Connection) -> None:
    """Pauses (card payments): where in the recording silence stands in for the line."""
    db.execute("""CREATE TABLE pauses (
        id INTEGER PRIMARY KEY, call_id INTEGER NOT NULL, start_s REAL NOT NULL, end_s REAL,
        reason TEXT NOT NULL)""")
    db.execute("CREATE INDEX pauses_call ON pauses (call_id)")


def _migration_5(db: sqlite3.Connection) -> None:
    """The contacts directory, and the contact's name on a call."""
    from appliance.contacts import ensure_schema

    ensure_schema(db)
    db.execute("ALTER TABLE calls ADD COLUMN contact_name TEXT")


def _migration_6(db: sqlite3.Connection) -> None:
    """Notes on a call (written in the web UI), and the address each audited action came from."""
    db.execute("ALTER TABLE calls ADD COLUMN notes TEXT")
    db.execute("ALTER TABLE audit ADD COLUMN address TEXT")
    db.execute("CREATE INDEX audit_at ON audit (at)")


def _migration_7(db: sqlite3.Connection) -> None:
    """Offload: when a call's recording was copied off the box, and where to."""
    db.execute("ALTER TABLE calls ADD COLUMN offloaded_at TEXT")
    db.execute("ALTER TABLE calls ADD COLUMN offload_target TEXT")
    # What the offloader asks for at every pass: the recordings not yet copied, oldest first.
    db.execute("CREATE INDEX calls_offload ON calls (id) WHERE offloaded_at IS NULL AND file IS NOT NULL")


def _migration_8(db: sqlite3.Connection) -> None:
    """SIP trunks: how many channels a recording has (2: caller left, callee right), and why a
    call ended (who hung up, a busy or failed answer, a dead RTP stream)."""
    db.execute("ALTER TABLE calls ADD COLUMN channels INTEGER")
    db.execute("ALTER TABLE calls ADD COLUMN end_reason TEXT")


def _migration_9(db: sqlite3.Connection) -> None:
    """Copies to delete at the offload target: those of calls erased or expired on the box."""
    db.execute("""CREATE TABLE offload_deletions (
        id INTEGER PRIMARY KEY, call_id INTEGER NOT NULL, file TEXT NOT NULL, target TEXT NOT NULL,
        reason TEXT NOT NULL)""")


# Schema steps, applied in order; the database's `user_version` counts those already applied.
MIGRATIONS = (_migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6,
              _migration_7, _migration_8, _migration_9)


def _columns(fields: dict) -> list[str]:
    unknown = set(fields) - COLUMNS
    if unknown:
        raise ValueError(f"not a column of calls: {', '.join(sorted(unknown))}")
    return list(fields)


class Catalogue:
    """Thread-safe access to the calls table of one data folder."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / CATALOGUE_NAME
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = connect(self.path)
            self.db.execute("PRAGMA synchronous = FULL")
            # Erased and expired rows are personal data: overwrite them, don't just unlink pages.
            self.db.execute("PRAGMA secure_delete = ON")
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the catalogue {self.path} is damaged (quick_check: {check})")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the catalogue {self.path}: {exc}") from None

    def _migrate(self) -> None:
        # The version is read inside the write transaction: the recorder, the web UI and the doctor
        # may open a new catalogue at the same moment, and only the first may migrate it.
        with self._lock, self._transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                step(self.db)
                self.db.execute(f"PRAGMA user_version = {number}")

    def _transaction(self):
        """A write transaction taken at once, so concurrent writers wait instead of failing."""
        return _Immediate(self.db)

    @contextmanager
    def transaction(self):
        """Several statements in one write transaction: yields the connection."""
        with self._lock, self._transaction():
            yield self.db

    def add_call(self, **fields) -> int:
        """Insert a call row and return its id."""
        names = _columns(fields)
        sql = f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        with self._lock, self._transaction():
            return self.db.execute(sql, list(fields.values())).lastrowid

    def update_call(self, call_id: int, **fields) -> None:
        """Change some fields of one call in one transaction."""
        names = _columns(fields)
        sql = f"UPDATE calls SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?"
        with self._lock, self._transaction():
            if self.db.execute(sql, [*fields.values(), call_id]).rowcount != 1:
                raise KeyError(call_id)

    def increment(self, call_id: int, column: str) -> None:
        """Add one to a counter column (flashes, capture_errors, overruns) of a call."""
        if column not in COUNTERS:
            raise ValueError(f"not a counter column: {column}")
        with self._lock, self._transaction():
            self.db.execute(f"UPDATE calls SET {column} = {column} + 1 WHERE id = ?", [call_id])

    def add_digit(self, call_id: int, offset_s: float, key: str) -> None:
        """Note a DTMF key heard `offset_s` seconds into a call's recording."""
        with self._lock, self._transaction():
            self.db.execute("INSERT INTO digits (call_id, offset_s, key) VALUES (?, ?, ?)",
                            [call_id, round(offset_s, 3), key])

    def digits(self, call_id: int) -> list[tuple[float, str]]:
        """The keys heard in a call, as (offset in seconds, key)."""
        with self._lock:
            return [tuple(row) for row in self.db.execute(
                "SELECT offset_s, key FROM digits WHERE call_id = ? ORDER BY offset_s", [call_id])]

    def pauses(self, call_id: int) -> list[tuple[float, float | None, str]]:
        """A call's pauses as (start, end, reason), offsets in seconds into its recording."""
        with self._lock:
            return [tuple(row) for row in self.db.execute(
                "SELECT start_s, end_s, reason FROM pauses WHERE call_id = ? ORDER BY start_s", [call_id])]

    def get_call(self, call_id: int) -> dict:
        """One call row as a dict (raises KeyError when there is no such call)."""
        with self._lock:
            row = self.db.execute("SELECT * FROM calls WHERE id = ?", [call_id]).fetchone()
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
        with self._lock:
            return [dict(row) for row in self.db.execute(sql, list(params))]

    def find(self, number: str | None = None, since: str | None = None, until: str | None = None,
             limit: int = 50) -> list[dict]:
        """The newest calls first, optionally of one number and within [since, until) (ISO 8601
        UTC); every form of this query is served by an index, whatever the catalogue's size."""
        where, params = [], []
        if number is not None:
            where.append("number = ?")
            params.append(number)
        if since is not None:
            where.append("started_at >= ?")
            params.append(since)
        if until is not None:
            where.append("started_at < ?")
            params.append(until)
        return self.calls(" AND ".join(where) or None, params, newest_first=True, limit=limit)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.db.close()


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file `path` in WAL mode, usable from any thread, in autocommit
    mode, waiting up to 5 s for other writers."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
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
        if self.outer:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def audit(db, actor: str, action: str, call_id: int | None = None, detail: str | None = None,
          address: str | None = None) -> None:
    """Add an entry to the audit trail: who did what to which call, from where (in `db`'s transaction)."""
    db.execute("INSERT INTO audit (at, actor, action, call_id, detail, address) VALUES (?, ?, ?, ?, ?, ?)",
               [iso_utc(time.time()), actor, action, call_id, detail, address])


def public_fields(row: dict) -> dict:
    """The user-facing fields of a call row, in the documented order."""
    return {name: row.get(name) for name in CALL_FIELDS}
