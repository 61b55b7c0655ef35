"""Schema migrations: a catalogue of every past version, with rows, upgrades to today's schema
without losing a row or a value, and call ids are never given twice, across upgrades and erasures."""

import ast
import sqlite3
from pathlib import Path

import pytest

from appliance.store import ledger
from appliance.store import migrations as migrations_module
from appliance.store.catalogue import CATALOGUE_NAME, Catalogue
from appliance.store.migrations import MIGRATIONS

PAST_VERSIONS = range(len(MIGRATIONS))
ERASED_ID = 8               # the newest call, erased: above every row's id
FILE_1 = "2026/01/05/1-t1.opus"
FILE_8 = "2026/01/06/8-t1.opus"


# -- building a catalogue as an older release left it --------------------------------------------

def _open_raw(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")      # a test's scratch file: no need to wait for the disk
    return db


def _apply(db: sqlite3.Connection, version: int) -> None:
    """MIGRATIONS[:version], each in its own transaction with its user_version bump, as the
    Catalogue applied them at the time."""
    for number, step in enumerate(MIGRATIONS[:version], start=1):
        db.execute("BEGIN IMMEDIATE")
        step(db)
        db.execute(f"PRAGMA user_version = {number}")
        db.execute("COMMIT")


def _tables(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def _insert(db: sqlite3.Connection, table: str, row: dict) -> None:
    """Insert the fields of `row` that `table` has at this version (later columns did not exist)."""
    present = set(_columns(db, table))
    fields = {name: value for name, value in row.items() if name in present}
    db.execute(f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
               list(fields.values()))


def _tables_at(version: int) -> set[str]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    _apply(db, version)
    tables = set(_tables(db))
    db.close()
    return tables


CALLS = [
    # A finished call with its recording, held, named, offloaded: most columns set.
    dict(id=1, line="t1", direction="incoming", number="+3225551234", started_at="2026-01-05T09:00:00Z",
         answered_at="2026-01-05T09:00:04Z", ended_at="2026-01-05T09:02:04Z", duration_s=120.0,
         notice_played_at="2026-01-05T09:00:05Z", notice_sha256="c" * 64, purpose="agreement",
         state="complete", file=FILE_1, size_bytes=48_000, sha256="a" * 64, format="opus",
         sample_rate=8000, samples=960_000, flashes=1, capture_errors=2, overruns=3, held=1,
         hold_reason="dispute with the supplier", clock_synced=1, contact_name="Acme",
         notes="promised delivery on Friday", offloaded_at="2026-01-05T10:00:00Z",
         offload_target="sftp://nas/calls", channels=1, end_reason="remote hangup"),
    dict(id=2, line="t1", direction="incoming", number="+3225550000", started_at="2026-01-05T10:00:00Z",
         ended_at="2026-01-05T10:00:30Z", purpose="training", state="missed", clock_synced=0,
         end_reason="no answer"),
    dict(id=3, line="t2", direction="outgoing", number="025550101", started_at="2026-01-05T11:00:00Z",
         answered_at="2026-01-05T11:00:02Z", purpose="training", state="recording",
         spool="spool/t2-123456789.wav", sample_rate=8000, recording_started_at="2026-01-05T11:00:03Z"),
    dict(id=4, line="t1", direction="unknown", started_at="2026-01-05T12:00:00Z", purpose="training",
         state="interrupted", file="2026/01/05/4-t1.flac", size_bytes=1_234, sha256="b" * 64,
         format="flac", sample_rate=8000, samples=12_000, overruns=7, channels=2),
    dict(id=5, line="t1", direction="incoming", number=None, started_at="2026-01-05T13:00:00Z",
         purpose="training", state="discarded", discard_reason="declined"),
    dict(id=7, line="t2", direction="incoming", number="+3225551234", started_at="2026-01-06T08:00:00Z",
         answered_at="2026-01-06T08:00:01Z", ended_at="2026-01-06T08:01:01Z", duration_s=60.0,
         purpose="training", state="complete", file="2026/01/06/7-t2.opus", size_bytes=99_999,
         sha256="d" * 64, format="opus", sample_rate=8000, samples=480_000, contact_name="Acme"),
]
ERASED = dict(id=ERASED_ID, line="t1", direction="incoming", number="+3225559999",
              started_at="2026-01-06T09:00:00Z", purpose="training", state="complete", file=FILE_8,
              size_bytes=5_000, sha256="e" * 64, format="opus", sample_rate=8000,
              offloaded_at="2026-01-06T10:00:00Z", offload_target="sftp://nas/calls")


def _fill(db: sqlite3.Connection) -> None:
    """Representative rows of every table there is at this version, written as the release of
    that version wrote them (one transaction)."""
    tables = set(_tables(db))
    db.execute("BEGIN IMMEDIATE")
    if "calls" in tables:
        for call in CALLS:
            _insert(db, "calls", call)
    if "tombstones" in tables:
        # The newest call, erased as the store does: its tombstone, ledger entry, audit entry and
        # the offload copy to delete are recorded, then its row goes.
        _insert(db, "calls", ERASED)
        _insert(db, "tombstones", dict(call_id=6, deleted_at="2026-01-05T20:00:00Z", reason="expired"))
        _insert(db, "tombstones", dict(call_id=ERASED_ID, deleted_at="2026-01-06T12:00:00Z", reason="erased"))
        _ledger_entry(db, "recorded", 1, "a" * 64)
        _ledger_entry(db, "held", 1, "a" * 64)
        _ledger_entry(db, "recorded", 7, "d" * 64, "opus")
        _ledger_entry(db, "erased", ERASED_ID, "e" * 64)
        _insert(db, "audit", dict(at="2026-01-05T12:00:00Z", actor="admin", action="hold", call_id=1,
                                  detail="dispute with the supplier", address="192.0.2.10"))
        _insert(db, "audit", dict(at="2026-01-06T12:00:00Z", actor="admin", action="erased",
                                  call_id=ERASED_ID, detail="erasure request", address="192.0.2.10"))
        _insert(db, "audit", dict(at="2026-01-06T13:00:00Z", actor="tech", action="login"))
        _insert(db, "pending_deletions", dict(path=FILE_8))
        _insert(db, "status", dict(key="storage_alarm", value="the archive is over its cap",
                                   since="2026-01-06T12:30:00Z"))
    if "digits" in tables:
        _insert(db, "digits", dict(call_id=1, offset_s=2.5, key="1"))
        _insert(db, "digits", dict(call_id=1, offset_s=3.25, key="#"))
    if "pauses" in tables:
        _insert(db, "pauses", dict(call_id=1, start_s=10.0, end_s=25.5, reason="card payment"))
        _insert(db, "pauses", dict(call_id=3, start_s=4.0, end_s=None, reason="card payment"))
    if "contacts" in tables:
        _insert(db, "contacts", dict(number="+3225551234", name="Acme", company="Acme SA",
                                     note="supplier", updated_at="2026-01-01T00:00:00Z"))
    if "offload_deletions" in tables:
        _insert(db, "offload_deletions", dict(call_id=ERASED_ID, file=FILE_8, target="sftp://nas/calls",
                                              reason="erased"))
    if "outbox" in tables:
        _insert(db, "outbox", dict(delivery="d-1", created_at="2026-01-05T09:02:05Z",
                                   body='{"event": "call.finished", "call_id": 1}', attempts=2,
                                   next_attempt_at="2026-01-05T09:03:00Z"))
    if "peaks" in tables:
        _insert(db, "peaks", dict(call_id=1, levels=bytes(range(200)) * 3))
    if "objections" in tables:
        _insert(db, "objections", dict(subject="9" * 64, hint="…234", added_at="2026-01-06T14:00:00Z",
                                       added_by="admin", note="request R-12"))
    if "tombstones" in tables:
        db.execute("DELETE FROM calls WHERE id = ?", [ERASED_ID])
    db.execute("COMMIT")


def _ledger_entry(db: sqlite3.Connection, event: str, call_id: int, sha256: str, detail: str | None = None) -> None:
    """An entry on the chain as the releases before the ledger's own file kept it: in the catalogue."""
    last = db.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    _insert(db, "ledger", ledger.chained(dict(at="2026-01-06T12:00:00Z", boot_id="b", mono_ns=len(event),
                                              event=event, call_id=call_id, sha256=sha256, detail=detail), last))


def _snapshot(db: sqlite3.Connection) -> dict[str, list[dict]]:
    return {table: [dict(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            for table in _tables(db)}


def _old_catalogue(folder: Path, version: int) -> dict[str, list[dict]]:
    """A catalogue at `version` with rows in it; returns its rows by table."""
    folder.mkdir(parents=True, exist_ok=True)
    db = _open_raw(folder / CATALOGUE_NAME)
    _apply(db, version)
    _fill(db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == version
    rows = _snapshot(db)
    db.close()
    return rows


def _schema(db: sqlite3.Connection) -> dict:
    """Tables, columns, indexes and triggers, whitespace in their SQL normalised."""
    master = sorted((row[0], row[1], row[2], " ".join((row[3] or "").split())) for row in db.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    columns = {table: [tuple(row) for row in db.execute(f"PRAGMA table_xinfo({table})")]
               for table in _tables(db)}
    indexes = {}
    for table in _tables(db):
        for index in db.execute(f"PRAGMA index_list({table})").fetchall():
            indexes[index[1]] = (table, tuple(index)[2:],
                                 [tuple(row) for row in db.execute(f"PRAGMA index_xinfo({index[1]})")])
    return {"master": master, "columns": columns, "indexes": indexes}


def _value(db: sqlite3.Connection, default: str | None):
    """The value of a column's default (an SQL expression, or None for NULL)."""
    return None if default is None else db.execute(f"SELECT {default}").fetchone()[0]


@pytest.fixture(scope="module")
def fresh_schema(tmp_path_factory):
    """The schema of a catalogue created today."""
    catalogue = Catalogue(tmp_path_factory.mktemp("fresh"))
    with catalogue.transaction() as db:
        schema = _schema(db)
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    catalogue.close()
    return schema


# -- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", PAST_VERSIONS)
def test_a_catalogue_of_every_past_version_upgrades_with_its_rows(tmp_path, version, fresh_schema):
    """A catalogue left at any past user_version, with calls in every state and rows in every table
    of that version, opens as today's: same schema as a fresh one, every row kept with its values
    (new columns at their defaults), the archive total right, the ledger chain intact, and the next
    call gets an id above every id the old catalogue names (rows, tombstones, ledger, audit,
    offload deletions)."""
    before = _old_catalogue(tmp_path, version)
    # The old catalogue is representative: every table of its version holds rows, and where
    # erasure was recorded, an erased call's id stands above every row's.
    assert all(before[table] for table in before), {t: len(r) for t, r in before.items()}
    if version >= 1:
        assert {call["state"] for call in before["calls"]} >= {"complete", "missed", "recording"}
    named = [call["id"] for call in before.get("calls", [])]
    for table in ("tombstones", "ledger", "audit", "offload_deletions"):
        named += [row["call_id"] for row in before.get(table, []) if row["call_id"] is not None]
    highest = max(named, default=0)
    if "tombstones" in before:
        assert highest == ERASED_ID > max(call["id"] for call in before["calls"])

    catalogue = Catalogue(tmp_path)
    try:
        with catalogue.transaction() as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
            assert _schema(db) == fresh_schema
            after = _snapshot(db)
            # The chain has a file of its own now, the same entries (heads kept off the box still match).
            assert "ledger_moving" not in after
            after["ledger"] = list(catalogue.ledger.entries())
            defaults = {table: {row[1]: _value(db, row[4]) for row in db.execute(f"PRAGMA table_info({table})")}
                        for table in after}

        for table, rows in before.items():
            assert len(after[table]) == len(rows), table
            for old, new in zip(rows, after[table]):
                assert {name: new[name] for name in old} == old, table
                for name in set(new) - set(old):        # columns added by the upgrade
                    assert new[name] == defaults[table][name], (table, name)
        for table in set(after) - set(before):          # tables added by the upgrade
            if table not in ("totals", "next_ids", "ledger"):
                assert after[table] == [], table

        sizes = sum(call["size_bytes"] or 0 for call in after["calls"])
        assert sizes == (sum(call.get("size_bytes") or 0 for call in CALLS) if version >= 1 else 0)
        totals = {row["name"]: row["value"] for row in after["totals"]}
        assert totals["archive_bytes"] == sizes
        assert ledger.check_chain(after["ledger"]) == []

        new_id = catalogue.add_call(line="t1", direction="incoming", number="+3225557777",
                                    started_at="2026-02-01T09:00:00Z", purpose="training",
                                    state="complete", file="2026/02/01/x-t1.opus", size_bytes=700,
                                    sha256="f" * 64)
        assert new_id > highest
        assert catalogue.get_call(new_id)["size_bytes"] == 700
        second = catalogue.add_call(line="t1", direction="outgoing", started_at="2026-02-01T10:00:00Z",
                                    purpose="training", state="missed")
        assert second > new_id
        with catalogue.transaction() as db:
            total = db.execute("SELECT value FROM totals WHERE name = 'archive_bytes'").fetchone()[0]
            assert total == sizes + 700 == db.execute("SELECT SUM(size_bytes) FROM calls").fetchone()[0]
    finally:
        catalogue.close()


SOURCES = ("calls", "tombstones", "ledger", "audit", "offload_deletions")
NAMED_ID = 50


def _name_call(db: sqlite3.Connection, source: str, call_id: int) -> None:
    if source == "tombstones":
        _insert(db, "tombstones", dict(call_id=call_id, deleted_at="2026-01-06T12:00:00Z", reason="evicted"))
    elif source == "ledger":
        _ledger_entry(db, "exported", call_id, "a" * 64)
    elif source == "audit":
        _insert(db, "audit", dict(at="2026-01-06T12:00:00Z", actor="admin", action="play", call_id=call_id))
    elif source == "offload_deletions":
        _insert(db, "offload_deletions", dict(call_id=call_id, file=f"2026/01/06/{call_id}.opus",
                                              target="sftp://nas/calls", reason="expired"))


@pytest.mark.parametrize("version, source", [(v, s) for v in PAST_VERSIONS for s in SOURCES
                                             if s in _tables_at(v)])
def test_each_record_of_an_old_id_keeps_it_from_being_given_again(tmp_path, version, source):
    """Upgraded from a past version, the next call id is above an id named only by `source` (the
    call itself gone, but for `calls`): each of the rows, tombstones, ledger, audit trail and
    offload deletions keeps its ids from being given to a new call."""
    db = _open_raw(tmp_path / CATALOGUE_NAME)
    _apply(db, version)
    db.execute("BEGIN IMMEDIATE")
    for call in CALLS[:3]:
        _insert(db, "calls", call)
    _insert(db, "calls", {**CALLS[1], "id": NAMED_ID})
    _name_call(db, source, NAMED_ID)
    if source != "calls":
        db.execute("DELETE FROM calls WHERE id = ?", [NAMED_ID])
    db.execute("COMMIT")
    assert db.execute("SELECT MAX(id) FROM calls").fetchone()[0] == (NAMED_ID if source == "calls" else 3)
    db.close()

    catalogue = Catalogue(tmp_path)
    try:
        new_id = catalogue.add_call(line="t1", direction="incoming", started_at="2026-02-01T09:00:00Z",
                                    purpose="training", state="missed")
        assert new_id > NAMED_ID
    finally:
        catalogue.close()


@pytest.mark.parametrize("tombstone", [True, False], ids=["with-tombstone", "row-only"])
def test_an_erased_newest_call_never_lends_its_id(tmp_path, tombstone):
    """Erasing the newest call's row (as the store does, after its tombstone; or its row alone)
    does not free its id: the next call, in this process or after a reopen, gets a new one."""
    catalogue = Catalogue(tmp_path)
    try:
        fields = dict(line="t1", direction="incoming", started_at="2026-02-01T09:00:00Z",
                      purpose="training", state="complete", file="f.opus", size_bytes=10)
        first = catalogue.add_call(**fields)
        newest = catalogue.add_call(**fields)
        assert newest > first
        with catalogue.transaction() as db:
            if tombstone:
                db.execute("INSERT INTO tombstones (call_id, deleted_at, reason) VALUES (?, ?, ?)",
                           [newest, "2026-02-01T10:00:00Z", "erased"])
            db.execute("DELETE FROM calls WHERE id = ?", [newest])
        again = catalogue.add_call(**fields)
        assert again not in (first, newest) and again > newest
        with catalogue.transaction() as db:
            db.execute("DELETE FROM calls WHERE id = ?", [again])
    finally:
        catalogue.close()

    reopened = Catalogue(tmp_path)
    try:
        assert reopened.add_call(**fields) > again
    finally:
        reopened.close()


def test_migrations_import_nothing_of_the_appliance():
    """Each migration is written out as it was on its day: migrations.py imports nothing from the
    `appliance` package (nor relatively), so a later change elsewhere cannot change a past step."""
    tree = ast.parse(Path(migrations_module.__file__).read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append((node.module or "", node.level))
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            assert name not in ("__import__", "import_module"), ast.unparse(node)
    assert imported, "migrations.py should at least import sqlite3"
    offending = [(module, level) for module, level in imported
                 if level > 0 or module == "appliance" or module.startswith("appliance.")]
    assert offending == []
