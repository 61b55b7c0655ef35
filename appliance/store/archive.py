"""Finalising: a closed spool file is encoded into the archive, hashed and catalogued in one step;
at start-up, spool files left by a crash are recovered the same way and marked `interrupted`.

The archive file is written under a temporary name, synced and renamed, so a crash leaves either
the spool (finalised again at the next start) or the complete archive file, never half of one.
"""

import hashlib
import logging
import os
import shutil
from pathlib import Path

from appliance.store import ledger
from appliance.store.catalogue import Catalogue
from appliance.clock import iso_utc
from appliance.codec import encode, suffix
from appliance.store.spool import fsync_dir, read_header, read_pcm, repair_header

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
ARCHIVE_DIR = "archive"
QUARANTINE_DIR = "quarantine"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's contents, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def archive_name(call: dict, fmt: str) -> Path:
    """Where a call's recording goes, relative to the data folder: archive/YYYY/MM/DD/<id>-<line>.<ext>."""
    day = call["started_at"][:10].replace("-", "/")
    return Path(ARCHIVE_DIR) / day / f"{call['id']:08d}-{call['line']}{suffix(fmt)}"


def finalise(catalogue: Catalogue, data_dir: Path, call_id: int, state: str, fmt: str,
             opus_bitrate: int, **fields) -> dict:
    """Encode the call's spool into the archive, then record file, size, hash and `state` (with any
    other `fields`) in one transaction and remove the spool. Returns the updated row.

    A spool that cannot be read is moved to quarantine and the call marked interrupted."""
    call = catalogue.get_call(call_id)
    spool = data_dir / call["spool"]
    try:
        frames = repair_header(spool)
        rate, channels = read_header(spool)
    except (OSError, ValueError) as exc:
        return _quarantine(catalogue, data_dir, call, spool, exc, fields)
    if frames == 0:
        catalogue.update_call(call_id, state=state, file=None, samples=0, duration_s=0.0,
                              sample_rate=rate, spool=None, **fields)
        _remove(spool)
        return catalogue.get_call(call_id)
    relative = archive_name(call, fmt)
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    encode(read_pcm(spool), rate, channels, partial, fmt, opus_bitrate)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    fsync_dir(target.parent)
    digest = sha256_file(target)
    with catalogue.transaction() as db:
        catalogue.update_call(
            call_id, state=state, file=str(relative), size_bytes=target.stat().st_size,
            sha256=digest, format=fmt, sample_rate=rate, samples=frames,
            duration_s=round(frames / rate, 3), spool=None, **fields)
        ledger.append(db, "recorded", call_id, digest, state)
    _remove(spool)
    return catalogue.get_call(call_id)


def _remove(spool: Path) -> None:
    spool.unlink(missing_ok=True)
    fsync_dir(spool.parent)


def _quarantine(catalogue, data_dir, call, spool, exc, fields) -> dict:
    log.error("call %s: spool %s cannot be read (%s); moved to %s", call["id"], spool, exc,
              QUARANTINE_DIR)
    if spool.exists():
        (data_dir / QUARANTINE_DIR).mkdir(exist_ok=True)
        shutil.move(spool, data_dir / QUARANTINE_DIR / spool.name)
    fields = {**fields, "state": "interrupted"}
    catalogue.update_call(call["id"], file=None, spool=None, **fields)
    return catalogue.get_call(call["id"])


def recover(catalogue: Catalogue, data_dir: Path, fmt: str, opus_bitrate: int) -> list[dict]:
    """Finalise every call a crash left in state `recording` as `interrupted`; quarantine spool
    files that belong to no such call. Returns the recovered rows."""
    recovered, kept = [], set()
    for call in catalogue.calls("state = ?", ["recording"]):
        spool = data_dir / call["spool"] if call["spool"] else None
        if spool is None or not spool.exists():
            log.warning("call %s was being recorded but its spool is gone", call["id"])
            catalogue.update_call(call["id"], state="interrupted", spool=None)
            continue
        ended = iso_utc(spool.stat().st_mtime)
        try:
            row = finalise(catalogue, data_dir, call["id"], "interrupted", fmt, opus_bitrate,
                           ended_at=ended)
        except Exception:
            # Recording must start whatever one leftover does; its spool stays for the next try.
            log.exception("call %s: recovery failed; its spool %s is kept", call["id"], spool)
            kept.add(spool.name)
            continue
        log.warning("recovered call %s: %.1f s of audio up to %s", call["id"],
                    row["duration_s"] or 0, ended)
        recovered.append(row)
    spool_dir = data_dir / SPOOL_DIR
    if spool_dir.is_dir():
        for orphan in sorted(p for p in spool_dir.iterdir() if p.name not in kept):
            log.error("spool file %s belongs to no call being recorded; moved to %s",
                      orphan, QUARANTINE_DIR)
            (data_dir / QUARANTINE_DIR).mkdir(exist_ok=True)
            shutil.move(orphan, data_dir / QUARANTINE_DIR / orphan.name)
    return recovered


def discard_declined(catalogue: Catalogue, call_id: int, spool, keep_number: bool) -> None:
    """The caller declined recording: destroy what was recorded of the call (its spool, keys and
    pauses) and keep a `discarded` row, without the number unless `keep_number`."""
    spool.close()
    spool.path.unlink(missing_ok=True)
    with catalogue.transaction() as db:
        db.execute("DELETE FROM digits WHERE call_id = ?", [call_id])
        db.execute("DELETE FROM pauses WHERE call_id = ?", [call_id])
        catalogue.update_call(call_id, state="discarded", discard_reason="declined", spool=None,
                              recording_started_at=None, **({} if keep_number else {"number": None}))
