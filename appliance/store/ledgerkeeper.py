"""The ledger's writer: moves the events the catalogue's queue holds onto the chain in
`ledger/ledger.db` (see `appliance.store.ledger`), in their order, each once.

Only the data folder's owner (the recorder's user: the recorder, the signer, the commands) may
write the ledger; the web UI, which runs as a user of its own, asks the signer to (`ledger`
over its socket). The ledger's folder is 0750 and its file 0640, owned by that user, so the web
UI reads them through the group and cannot change them. A ledger folder or file of another owner,
or that the group may write, is refused, as is starting a new chain where one was begun already
(`keys/ledger-begun`, in the folder the web UI may not write) or where the catalogue's was moved
already: a ledger gone missing is restored from a backup, never silently begun again.

Crash-safe: the chain and how far the queue was moved are committed together; the queue's moved
rows are deleted afterwards, and those a crash leaves are skipped the next time.
"""

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

from appliance.clock import iso_utc
from appliance.errors import StoreError
from appliance.store import ledger

FOLDER_MODE = 0o750
FILE_MODE = 0o640
# The table of the catalogue that held the chain before it had a file of its own.
MOVING_TABLE = "ledger_moving"
# Left once the ledger is begun, in the folder the web UI may not write (nor rename anything in):
# a ledger missing beside it is never begun again, whatever the catalogue says.
BEGUN_MARK = "keys/ledger-begun"
KEYS_MODE = 0o700               # keys/ when the ledger makes it (the signer opens it to the group)

_drain_lock = threading.Lock()      # one drain at a time in a process (others wait on the file's lock)


class LedgerError(StoreError):
    """The ledger cannot be written: why, and what to do."""


def owner_of(data_dir: Path) -> int:
    """The user id that owns the data folder: the one that writes the ledger."""
    return Path(data_dir).stat().st_uid


def may_write(data_dir: Path) -> bool:
    """Whether this process writes the ledger itself (it is the data folder's owner, or root)."""
    return os.geteuid() in (0, owner_of(data_dir))


def problems(data_dir: Path) -> list[str]:
    """What is wrong with the ledger's folder and file: missing once begun, or another than their
    owner may write them (empty: all is well)."""
    found, owner = [], owner_of(data_dir)
    mark, path = Path(data_dir) / BEGUN_MARK, ledger.ledger_path(data_dir)
    if mark.exists() and not path.exists():
        found.append(f"{path} is missing (the ledger was begun on {mark.read_text().strip()}): "
                     "restore it from a backup")
    for path in (Path(data_dir) / ledger.LEDGER_DIR, ledger.ledger_path(data_dir)):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            found.append(f"{path} is not a {'folder' if path.name == ledger.LEDGER_DIR else 'file'}")
        elif info.st_uid != owner:
            found.append(f"{path} is owned by uid {info.st_uid}, not by the data folder's owner (uid {owner}): "
                         "someone else made it; keep it aside and restore the ledger from a backup")
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            found.append(f"{path} may be written by others than its owner: chmod go-w {path}")
    return found


def behind(catalogue) -> bool:
    """Whether the catalogue holds events, or the chain from before, that are not on the ledger."""
    with catalogue.read() as cat:
        return bool(cat.execute(f"SELECT EXISTS (SELECT 1 FROM ledger_queue) OR EXISTS "
                                f"(SELECT 1 FROM sqlite_master WHERE name = '{MOVING_TABLE}')").fetchone()[0])


def drain(catalogue) -> int:
    """Move the queued events of `catalogue` (an `appliance.store.catalogue.Catalogue`) onto the
    chain; returns how many. LedgerError when this process may not, or the ledger is not sound."""
    data_dir = catalogue.path.parent
    if not may_write(data_dir):
        raise LedgerError(f"uid {os.geteuid()} does not write the ledger of {data_dir}: its owner does "
                          "(the signer, for the web UI)")
    with _drain_lock:
        db = _open(data_dir, catalogue)
        try:
            moved = _move(db, catalogue)
        finally:
            db.close()
    count, done, tidy = moved
    if tidy:
        with catalogue.transaction() as cat:
            cat.execute("DELETE FROM ledger_queue WHERE id <= ?", [done])
            cat.execute(f"DROP TABLE IF EXISTS {MOVING_TABLE}")
    return count


def _move(db: sqlite3.Connection, catalogue) -> tuple[int, int, bool]:
    """(events moved, the last queue id on the chain, whether the catalogue keeps what is on the
    chain now) in one transaction of the ledger."""
    db.execute("BEGIN IMMEDIATE")
    try:
        progress = dict(db.execute("SELECT name, value FROM progress").fetchall())
        done, imported = progress.get("queue_id", 0), bool(progress.get("imported"))
        last = db.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        with catalogue.read() as cat:
            moving = cat.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [MOVING_TABLE]).fetchone()
            stale = cat.execute("SELECT 1 FROM ledger_queue WHERE id <= ? LIMIT 1", [done]).fetchone()
            if not imported:
                if moving is None:
                    raise LedgerError(f"the ledger {ledger.ledger_path(catalogue.path.parent)} was begun but "
                                      "the catalogue's chain is gone: restore both from a backup")
                # Verbatim: the same sequence numbers and hashes, so heads kept off the box still match;
                # row by row, as millions of entries do not fit a Pi's memory at once.
                old = cat.execute(f"SELECT {', '.join(ledger.FIELDS)}, hash FROM {MOVING_TABLE} ORDER BY seq")
                db.executemany(f"INSERT INTO ledger ({', '.join(ledger.FIELDS)}, hash) VALUES ({', '.join('?' * 10)})",
                               map(tuple, old))
                last = db.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
            queued = cat.execute(f"SELECT id, {', '.join(ledger.EVENT_FIELDS)} FROM ledger_queue WHERE id > ? "
                                 "ORDER BY id", [done]).fetchall()
        for event in queued:
            entry = ledger.chained(dict(event), last)
            db.execute(f"INSERT INTO ledger ({', '.join(entry)}) VALUES ({', '.join('?' * len(entry))})",
                       list(entry.values()))
            last, done = (entry["seq"], entry["hash"]), event["id"]
        db.executemany("INSERT OR REPLACE INTO progress VALUES (?, ?)", [("queue_id", done), ("imported", 1)])
        db.execute("COMMIT")
        return len(queued), done, bool(queued or moving or stale)
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _open(data_dir: Path, catalogue) -> sqlite3.Connection:
    """The ledger's write connection, the folder and file made (only to bring over the chain the
    catalogue still holds) and checked."""
    folder, path, mark = Path(data_dir) / ledger.LEDGER_DIR, ledger.ledger_path(data_dir), Path(data_dir) / BEGUN_MARK
    if not path.exists():
        with catalogue.read() as cat:
            moving = cat.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [MOVING_TABLE]).fetchone()
        if moving is None or mark.exists():
            raise LedgerError(f"the ledger {path} is missing: restore it from a backup (it was begun on "
                              f"{mark.read_text().strip() if mark.exists() else 'this store'}, and a new one "
                              "is not begun in its place)")
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        _own(folder, FOLDER_MODE, data_dir)
    if found := problems(data_dir):
        raise LedgerError("; ".join(found))
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=10)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous = FULL")
        # A rollback journal, not WAL: the web UI's user reads the file and may not write beside it.
        db.execute("PRAGMA journal_mode = DELETE")
        for statement in ledger.SCHEMA:
            db.execute(statement)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot write the ledger {path}: {exc}") from None
    _own(path, FILE_MODE, data_dir)
    if not mark.exists():
        mark.parent.mkdir(mode=KEYS_MODE, exist_ok=True)
        _own(mark.parent, stat.S_IMODE(mark.parent.stat().st_mode), data_dir)
        mark.write_text(iso_utc(time.time()) + "\n")
        _own(mark, FILE_MODE, data_dir)
    return db


def _own(path: Path, mode: int, data_dir: Path) -> None:
    """`path` with `mode`, and the data folder's owner's (made by root: a command run with sudo)."""
    info = path.stat()
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
    if os.geteuid() == 0 and info.st_uid != owner_of(data_dir):
        data = Path(data_dir).stat()
        os.chown(path, data.st_uid, data.st_gid)
