"""One consistent view of an SQLite database for a reader."""

import sqlite3
from contextlib import contextmanager


@contextmanager
def snapshot(db: sqlite3.Connection):
    """Yields `db` (a connection in autocommit mode) inside one read transaction; used inside one
    already open, it is part of that one."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")
