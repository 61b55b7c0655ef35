"""Finalising: a closed spool file is encoded into the archive, hashed and catalogued in one step;
at start-up, spool files left by a crash are recovered the same way and marked `interrupted`.

The archive file is written under a temporary name, synced and renamed, so a crash leaves either
the spool (finalised again at the next start) or the complete archive file, never half of one.

In a sealed store the archive file is sealed as it is encoded (the recorder reads its spool back
through the stream key it holds in RAM): its hash, in the row and the ledger, is the sealed file's,
so verifying, cleaning and offloading need no key. A sealed spool left by a crash can't be read
(its stream key died with the process): its torn tail is cut and it is archived as it is, sealed.
"""

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.store import ledger
from appliance.store.catalogue import Catalogue
from appliance.store.peaks import PeakFolder
from appliance.clock import iso_utc
from appliance.codec import encode, suffix
from appliance.store.recording import SealingWriter, is_sealed_file
from appliance.store.sealing import SealError, Sealer, SealedStream, complete_records, record_spans
from appliance.store.spool import fsync_dir, read_header, read_pcm, repair_header, sealed_format, sealed_frames

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
ARCHIVE_DIR = "archive"
QUARANTINE_DIR = "quarantine"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's contents, as hex."""
    with open(path, "rb") as f:
        return sha256_of(f)


def sha256_of(f: BinaryIO) -> str:
    """SHA-256 of what is left to read of a binary file, as hex."""
    digest = hashlib.sha256()
    while block := f.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


def archive_name(call: dict, fmt: str) -> Path:
    """Where a call's recording goes, relative to the data folder: archive/YYYY/MM/DD/<id>-<line>.<ext>."""
    day = call["started_at"][:10].replace("-", "/")
    return Path(ARCHIVE_DIR) / day / f"{call['id']:08d}-{call['line']}{suffix(fmt)}"


@dataclass
class Encoded:
    """A call's audio in the archive (or known to be unusable), waiting to be catalogued."""

    call_id: int
    spool: Path
    fields: dict                # what the call's row gets: file, size, hash, format, samples…
    sha256: str | None = None   # of the archive file, for the ledger
    peaks: bytes | None = None  # its waveform (see appliance.store.peaks)


def encode_spool(catalogue: Catalogue, data_dir: Path, call_id: int, fmt: str, opus_bitrate: int,
                 sealer: Sealer | None = None, stream: SealedStream | None = None) -> Encoded:
    """Encode a call's closed spool into its archive file (written under a temporary name, synced,
    renamed): the file work of finalising, which writes nothing to the catalogue. In a sealed store
    (`sealer`) the archive file is sealed, and a sealed spool is read through the `stream` that
    wrote it; one without it (left by a crash) is archived as it is.

    A spool that cannot be read is moved to quarantine (the call becomes `interrupted`). When the
    disk has no room left for the encoded copy, the spool itself becomes the archive file, as WAV."""
    call = catalogue.get_call(call_id)
    spool = data_dir / call["spool"]
    try:
        if stream is not None:
            rate, channels, frames = sealed_format(spool, stream)
        elif sealer is not None and is_sealed_file(spool):
            return keep_sealed_spool(call, data_dir, spool)
        else:
            frames = repair_header(spool)
            rate, channels = read_header(spool)
    except (OSError, ValueError, SealError) as exc:
        log.error("call %s: spool %s cannot be read (%s); moved to %s", call_id, spool, exc, QUARANTINE_DIR)
        if spool.exists():
            # Named by the call, so that erasing the call finds it.
            (data_dir / QUARANTINE_DIR).mkdir(exist_ok=True)
            shutil.move(spool, data_dir / QUARANTINE_DIR / f"{call_id}-{spool.name}")
        return Encoded(call_id, spool, {"file": None, "state": "interrupted"})
    if frames == 0:
        return Encoded(call_id, spool, {"file": None, "samples": 0, "duration_s": 0.0, "sample_rate": rate})
    relative = archive_name(call, fmt)
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    folder = PeakFolder(frames, channels)
    try:
        chunks = folder.passing(read_pcm(spool, stream=stream))
        if sealer is None:
            encode(chunks, rate, channels, partial, fmt, opus_bitrate)
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
        else:
            with open(partial, "wb") as f:
                sealing = SealingWriter(sealer, f)
                encode(chunks, rate, channels, sealing, fmt, opus_bitrate)
                sealing.finish()
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.errno != errno.ENOSPC or (stream is None and (fmt == "wav" or sealer is not None)):
            raise
        # No room for a second copy: the spool is a valid WAV file already (sealed in a sealed
        # store, where it is a WAV once opened); it becomes the archive.
        fmt, relative = "wav", archive_name(call, "wav")
        target = data_dir / relative
        log.warning("call %s: no room to encode it as %s; kept as WAV", call_id, partial.suffixes[0])
        os.link(spool, partial)
        folder = PeakFolder(frames, channels)
        for chunk in read_pcm(spool, stream=stream):
            folder.add(chunk)
    os.replace(partial, target)
    fsync_dir(target.parent)
    digest = sha256_file(target)
    return Encoded(call_id, spool, {"file": str(relative), "size_bytes": target.stat().st_size, "sha256": digest,
                                    "format": fmt, "sample_rate": rate, "samples": frames,
                                    "duration_s": round(frames / rate, 3)}, digest, folder.result())


def keep_sealed_spool(call: dict, data_dir: Path, spool: Path) -> Encoded:
    """Archive a sealed spool whose stream key is gone as it is: its complete records (a torn
    last one is cut), sealed; it reads as a WAV file with the store's key. Its length comes from
    the records' lengths and the row's rate and channels; its peaks are drawn when it is first
    played (they need the key)."""
    _, end = complete_records(spool)
    with open(spool, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
        _, spans = record_spans(f, spool)
    rate, frames = call["sample_rate"], sealed_frames(spans, call["channels"] or 1)
    length = {"samples": frames, "duration_s": round(frames / rate, 3)} if rate else {}
    relative = archive_name(call, "wav")
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    os.link(spool, partial)
    os.replace(partial, target)
    fsync_dir(target.parent)
    digest = sha256_file(target)
    log.warning("call %s: its sealed spool is archived as it is (sealed WAV; its key is the store's)", call["id"])
    return Encoded(call["id"], spool, {"file": str(relative), "size_bytes": target.stat().st_size, "sha256": digest,
                                       "format": "wav", **length}, digest)


def record_archive(catalogue: Catalogue, encoded: Encoded, state: str, **fields) -> dict:
    """Catalogue an encoded call in one transaction (its file, size, hash, `state` and any other
    `fields`, with the `recorded` ledger entry), then remove its spool. Returns the updated row.
    Safe to run again when the catalogue refused it."""
    fields = {"state": state, **fields, **encoded.fields, "spool": None}
    with catalogue.transaction() as db:
        [spool] = db.execute("SELECT spool FROM calls WHERE id = ?", [encoded.call_id]).fetchone() or [None]
        catalogue.update_call(encoded.call_id, **fields)
        if spool:
            # Once this commits, the spool is a second copy no row names: listed, a crash before
            # it is removed leaves it to the cleaner (and to `recover`), not to quarantine.
            db.execute("INSERT OR IGNORE INTO pending_deletions (path) VALUES (?)", [spool])
        if encoded.sha256 is not None:
            ledger.record(db, "recorded", encoded.call_id, encoded.sha256, recorded_detail(db, encoded.call_id))
        if encoded.peaks is not None:
            db.execute("INSERT OR REPLACE INTO peaks (call_id, levels) VALUES (?, ?)", [encoded.call_id, encoded.peaks])
    _remove(encoded.spool)
    return catalogue.get_call(encoded.call_id)


def recorded_detail(db, call_id: int) -> str:
    """The `recorded` ledger entry's detail: the call's state, purpose, legal basis and end of
    retention as its row holds them (JSON; the last two null for a call recorded before they were
    stored)."""
    row = db.execute("SELECT state, purpose, legal_basis, retention_end FROM calls WHERE id = ?", [call_id]).fetchone()
    return json.dumps(dict(row), ensure_ascii=False, sort_keys=True)


def finalise(catalogue: Catalogue, data_dir: Path, call_id: int, state: str, fmt: str,
             opus_bitrate: int, sealer: Sealer | None = None, **fields) -> dict:
    """Encode the call's spool into the archive (sealed with `sealer` in a sealed store), then
    record file, size, hash and `state` (with any other `fields`) in one transaction and remove the
    spool. Returns the updated row."""
    return record_archive(catalogue, encode_spool(catalogue, data_dir, call_id, fmt, opus_bitrate, sealer),
                          state, **fields)


def _remove(spool: Path) -> None:
    if spool.exists():
        spool.unlink(missing_ok=True)
        fsync_dir(spool.parent)


# A spool's name: the line's, the start in Unix milliseconds, and a number when a line has several.
SPOOL_NAME = re.compile(r"(?P<line>.+)-(?P<ms>\d{13})(-\d+)?\.wav")


def recover(catalogue: Catalogue, data_dir: Path, fmt: str, opus_bitrate: int,
            purposes: dict[str, str] | None = None, legal_facts=None, sealer: Sealer | None = None) -> list[dict]:
    """Finalise every call a crash left in state `recording` as `interrupted` (sealed with `sealer`
    in a sealed store). A spool whose row was never written (the catalogue refused writes until
    the crash) gets one, `interrupted`, if it names a line of `purposes` (line name -> purpose),
    with the legal basis and retention end `legal_facts(purpose, started_at)` gives; a spool whose
    call was archived just before the stop is removed; other stray files are quarantined. Returns
    the recovered rows."""
    purposes = purposes or {}
    known = {row["spool"] for row in catalogue.calls("state = ?", ["recording"]) if row["spool"]}
    spool_dir = data_dir / SPOOL_DIR
    with catalogue.read() as db:
        finished = {row[0] for row in db.execute("SELECT path FROM pending_deletions")}
    for spool in sorted(spool_dir.iterdir()) if spool_dir.is_dir() else ():
        if f"{SPOOL_DIR}/{spool.name}" in finished:
            log.warning("spool %s was encoded and catalogued before the stop: removed", spool.name)
            spool.unlink()
    for orphan in sorted(spool_dir.iterdir()) if spool_dir.is_dir() else ():
        match = SPOOL_NAME.fullmatch(orphan.name)
        relative = f"{SPOOL_DIR}/{orphan.name}"
        if relative in known or match is None or match["line"] not in purposes:
            continue
        started_at, purpose = iso_utc(int(match["ms"]) / 1000), purposes[match["line"]]
        facts = legal_facts(purpose, started_at) if legal_facts is not None else {}
        call_id = catalogue.add_call(line=match["line"], direction="unknown", started_at=started_at,
                                     purpose=purpose, state="recording", spool=relative, **facts)
        log.warning("spool %s had no row (the catalogue refused it): recovered as call %s", orphan.name, call_id)
    recovered, kept = [], set()
    for call in catalogue.calls("state = ?", ["recording"]):
        spool = data_dir / call["spool"] if call["spool"] else None
        if spool is None or not spool.exists():
            log.warning("call %s was being recorded but its spool is gone", call["id"])
            catalogue.update_call(call["id"], state="interrupted", spool=None)
            continue
        ended = iso_utc(spool.stat().st_mtime)
        try:
            row = finalise(catalogue, data_dir, call["id"], "interrupted", fmt, opus_bitrate, sealer,
                           ended_at=ended)
        except Exception:
            # Recording must start whatever one leftover does; its spool stays for the next try.
            log.exception("call %s: recovery failed; its spool %s is kept", call["id"], spool)
            kept.add(spool.name)
            continue
        log.warning("recovered call %s: %.1f s of audio up to %s", call["id"],
                    row["duration_s"] or 0, ended)
        recovered.append(row)
    if spool_dir.is_dir():
        for orphan in sorted(p for p in spool_dir.iterdir() if p.name not in kept):
            log.error("spool file %s belongs to no call being recorded; moved to %s",
                      orphan, QUARANTINE_DIR)
            (data_dir / QUARANTINE_DIR).mkdir(exist_ok=True)
            shutil.move(orphan, data_dir / QUARANTINE_DIR / orphan.name)
    return recovered
