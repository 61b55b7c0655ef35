"""The catalogue's schema, step by step. `PRAGMA user_version` counts the steps a database has had;
`Catalogue` applies the missing ones at open, each with its version bump in one transaction.
"""

import sqlite3


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
    db.execute("""CREATE TABLE IF NOT EXISTS contacts (
        number TEXT PRIMARY KEY, name TEXT NOT NULL, company TEXT, note TEXT,
        updated_at TEXT NOT NULL)""")
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


def _migration_10(db: sqlite3.Connection) -> None:
    """Call ids are never given twice: the next id is kept apart from the rows (an erased or evicted
    newest call must not lend its id, its archive name and its tombstone to the next call), and no
    lower than any id a tombstone, the ledger, the audit trail or an offload deletion names."""
    db.execute("CREATE TABLE next_ids (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("""INSERT INTO next_ids VALUES ('calls', 1 + MAX(
        (SELECT COALESCE(MAX(id), 0) FROM calls), (SELECT COALESCE(MAX(call_id), 0) FROM tombstones),
        (SELECT COALESCE(MAX(call_id), 0) FROM ledger), (SELECT COALESCE(MAX(call_id), 0) FROM audit),
        (SELECT COALESCE(MAX(call_id), 0) FROM offload_deletions)))""")
    db.execute("""CREATE TRIGGER calls_next_id AFTER INSERT ON calls
        BEGIN UPDATE next_ids SET value = MAX(value, NEW.id + 1) WHERE name = 'calls'; END""")


def _migration_11(db: sqlite3.Connection) -> None:
    """The webhook's outbox: events kept until the receiver took them, so a restart loses none."""
    db.execute("""CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, delivery TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
        body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT)""")


def _migration_12(db: sqlite3.Connection) -> None:
    """Each call's waveform peaks (one byte per column), folded when it is archived; apart from the
    call's row, which is read far more often."""
    db.execute("CREATE TABLE peaks (call_id INTEGER PRIMARY KEY, levels BLOB NOT NULL)")


def _migration_13(db: sqlite3.Connection) -> None:
    """Restriction of processing (GDPR Art. 18): a restricted call is kept and not played."""
    db.execute("ALTER TABLE calls ADD COLUMN restricted INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE calls ADD COLUMN restrict_reason TEXT")


def _migration_14(db: sqlite3.Connection) -> None:
    """The audit trail's hash chain: each entry's keyed hash of its detail, the hash of the entry
    before and its own (the entries before are chained by the next write)."""
    for column in ("detail_mac", "prev_hash", "hash"):
        db.execute(f"ALTER TABLE audit ADD COLUMN {column} TEXT")
    db.execute("CREATE INDEX audit_unchained ON audit (id) WHERE hash IS NULL")
    # Only a chained entry's detail may change (an erasure takes a person's number out of it).
    db.execute("""CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""")
    db.execute("""CREATE TRIGGER audit_no_update
        BEFORE UPDATE OF id, at, actor, action, call_id, address, detail_mac, prev_hash, hash ON audit
        WHEN OLD.hash IS NOT NULL BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""")


def _migration_15(db: sqlite3.Connection) -> None:
    """The do-not-record list (GDPR Art. 21): each number as its keyed hash, never as written."""
    db.execute("""CREATE TABLE objections (
        subject TEXT PRIMARY KEY, hint TEXT NOT NULL, added_at TEXT NOT NULL, added_by TEXT NOT NULL, note TEXT)""")


def _migration_16(db: sqlite3.Connection) -> None:
    """The legal facts of a call as they were when it was recorded: its purpose's legal basis and
    the end of its retention (NULL for calls from before: not recorded at the time), and when the
    CRM took the call's webhook event."""
    db.execute("ALTER TABLE calls ADD COLUMN legal_basis TEXT")
    db.execute("ALTER TABLE calls ADD COLUMN retention_end TEXT")
    db.execute("ALTER TABLE calls ADD COLUMN crm_sent_at TEXT")
    # What the cleaner asks for: the calls whose recorded retention has ended.
    db.execute("CREATE INDEX calls_retention_end ON calls (retention_end) WHERE held = 0 AND restricted = 0")


def _migration_17(db: sqlite3.Connection) -> None:
    """Number tags (a sealed store): a keyed hash of each call's and contact's number, by which a
    store whose numbers are sealed finds them; a contact's number is unique by its tag."""
    db.execute("ALTER TABLE calls ADD COLUMN number_tag TEXT")
    db.execute("CREATE INDEX calls_number_tag ON calls (number_tag)")
    # What the web asks for after an unlock: the rows written while it could not tag them.
    db.execute("CREATE INDEX calls_untagged ON calls (id) WHERE number_tag IS NULL AND number IS NOT NULL")
    db.execute("ALTER TABLE contacts ADD COLUMN number_tag TEXT")
    db.execute("CREATE UNIQUE INDEX contacts_number_tag ON contacts (number_tag)")


def _migration_18(db: sqlite3.Connection) -> None:
    """The ledger moves to a file that only the recorder's user writes: the catalogue keeps a queue
    of the events recorded in its transactions, and its chain until the ledger's writer has brought
    it over (then drops it)."""
    db.execute("""CREATE TABLE ledger_queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, boot_id TEXT NOT NULL,
        mono_ns INTEGER NOT NULL, event TEXT NOT NULL, call_id INTEGER, sha256 TEXT, detail TEXT)""")
    db.execute("ALTER TABLE ledger RENAME TO ledger_moving")


# Schema steps, applied in order; the database's `user_version` counts those already applied.
# Each is written out as it was on its day: a step never calls code that may change later.
MIGRATIONS = (_migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6,
              _migration_7, _migration_8, _migration_9, _migration_10, _migration_11, _migration_12,
              _migration_13, _migration_14, _migration_15, _migration_16, _migration_17,
              _migration_18)
