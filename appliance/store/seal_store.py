"""Sealing a plain store in place (`callrec seal`): every recording, quarantined spool and personal
field is rewritten sealed, resumably and crash-safely, while `callrec verify` passes before and after.

A recording is sealed as: the sealed copy written beside it (`.sealing`) and synced; then, in one
transaction, its row takes the copy's size and SHA-256 and the ledger a `sealed` entry naming the
hash it had; then the copy replaces the original. A stop at any point leaves either the original
with its old row (the copy is made again) or a row that names the copy (the rename is finished):
never a recording without a hash that matches it.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.store import ledger
from appliance.store.archive import QUARANTINE_DIR, sha256_file
from appliance.store.catalogue import Catalogue
from appliance.store.sealing import STREAM_MAGIC, Sealer, is_sealed_stream, seal_file
from appliance.store.spool import fsync_dir

log = logging.getLogger(__name__)

COPY_SUFFIX = ".sealing"
SEALED_EVENT = "sealed"


@dataclass
class SealProgress:
    """How far sealing has come: recordings done of all, and their bytes."""

    done: int = 0
    total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    skipped: int = 0            # sealed before (a resumed run)


def _is_sealed_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return is_sealed_stream(f.read(len(STREAM_MAGIC)))


def _seal_copy(sealer: Sealer, source: Path, copy: Path) -> None:
    with open(source, "rb") as plain, open(copy, "wb") as sealed:
        seal_file(sealer, plain, sealed)
        sealed.flush()
        os.fsync(sealed.fileno())


def seal_recording(catalogue: Catalogue, data_dir: Path, sealer: Sealer, call_id: int, relative: str,
                   catalogued_sha: str) -> bool:
    """Seal one call's recording in place; False if it was sealed already."""
    path = Path(data_dir) / relative
    copy = path.with_name(path.name + COPY_SUFFIX)
    if copy.exists():
        if sha256_file(copy) == catalogued_sha:
            os.replace(copy, path)          # the row names the copy: finish what a stop cut short
            fsync_dir(path.parent)
            return True
        copy.unlink()                       # a copy the row never took: make it again
    if _is_sealed_file(path):
        return False
    _seal_copy(sealer, path, copy)
    sha = sha256_file(copy)
    with catalogue.transaction() as db:
        db.execute("UPDATE calls SET sha256 = ?, size_bytes = ? WHERE id = ?", [sha, copy.stat().st_size, call_id])
        ledger.record(db, SEALED_EVENT, call_id, sha, f"sealed at rest; the plain recording's SHA-256 was {catalogued_sha}")
    os.replace(copy, path)
    fsync_dir(path.parent)
    return True


def seal_quarantine(data_dir: Path, sealer: Sealer) -> int:
    """Seal the spools kept in quarantine (they are audio too); returns how many were sealed."""
    folder = Path(data_dir) / QUARANTINE_DIR
    count = 0
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.endswith(COPY_SUFFIX):
            path.unlink()
            continue
        if not path.is_file() or _is_sealed_file(path):
            continue
        copy = path.with_name(path.name + COPY_SUFFIX)
        _seal_copy(sealer, path, copy)
        os.replace(copy, path)
        fsync_dir(folder)
        count += 1
    return count


def seal_recordings(catalogue: Catalogue, data_dir: Path, sealer: Sealer, progress=None) -> SealProgress:
    """Seal every recording of the store; `progress(SealProgress)` after each one."""
    with catalogue.read() as db:
        calls = db.execute("SELECT id, file, sha256, size_bytes FROM calls WHERE file IS NOT NULL ORDER BY id").fetchall()
    state = SealProgress(total=len(calls), bytes_total=sum(row["size_bytes"] or 0 for row in calls))
    for row in calls:
        if not seal_recording(catalogue, data_dir, sealer, row["id"], row["file"], row["sha256"]):
            state.skipped += 1
        state.done += 1
        state.bytes_done += row["size_bytes"] or 0
        if progress is not None:
            progress(state)
    return state
