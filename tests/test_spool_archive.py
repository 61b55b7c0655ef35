"""Spool files survive a crash; finalising encodes, hashes and catalogues; recovery finds leftovers."""

import hashlib
import os
import time

import numpy as np
import pytest

from appliance.store.archive import QUARANTINE_DIR, SPOOL_DIR, finalise, recover
from appliance.store.catalogue import MIGRATIONS, Catalogue
from appliance.store.spool import HEADER_BYTES, SpoolWriter, read_header, repair_header
from conftest import RATE, recording, tone, tone_level


def pcm(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def spooled_call(data, catalogue, audio: bytes, close=True):
    (data / SPOOL_DIR).mkdir(parents=True, exist_ok=True)
    writer = SpoolWriter(data / SPOOL_DIR / "t1-1.wav", RATE, flush_interval=0.1)
    for i in range(0, len(audio), 320):
        writer.append(audio[i:i + 320])
    if close:
        writer.close()
    call_id = catalogue.add_call(line="t1", direction="outgoing", started_at="2026-11-23T10:00:00.000Z",
                                 purpose="training", state="recording", spool=f"{SPOOL_DIR}/t1-1.wav")
    return call_id, writer


def test_the_spool_reaches_the_disk_at_the_flush_cadence_without_close(tmp_path):
    writer = SpoolWriter(tmp_path / "s.wav", RATE, flush_interval=0.1)
    writer.append(b"\1\0" * 8000)
    time.sleep(0.35)
    assert os.path.getsize(tmp_path / "s.wav") == HEADER_BYTES + 16000
    # The header still says 0 bytes, as after a crash; repair makes it whole.
    assert repair_header(tmp_path / "s.wav") == 8000
    writer.close()


def test_a_torn_last_frame_is_dropped_on_repair(tmp_path):
    writer = SpoolWriter(tmp_path / "s.wav", RATE)
    writer.append(b"\1\0" * 100)
    writer.close()
    with open(tmp_path / "s.wav", "ab") as f:
        f.write(b"\7")
    assert repair_header(tmp_path / "s.wav") == 100
    assert read_header(tmp_path / "s.wav") == (RATE, 1)


@pytest.mark.parametrize("fmt, max_bytes", [("opus", 8000), ("flac", 40000), ("wav", 32100)])
def test_finalise_archives_in_the_configured_format_with_its_hash(tmp_path, fmt, max_bytes):
    catalogue = Catalogue(tmp_path)
    call_id, _ = spooled_call(tmp_path, catalogue, pcm(tone(440, 2.0)))
    row = finalise(catalogue, tmp_path, call_id, "complete", fmt, 16000, ended_at="2026-11-23T10:00:02.000Z")
    archived = tmp_path / row["file"]
    assert row["state"] == "complete" and row["file"].endswith("." + fmt)
    assert row["samples"] == 2 * RATE and row["duration_s"] == 2.0
    assert row["sha256"] == hashlib.sha256(archived.read_bytes()).hexdigest()
    assert row["size_bytes"] == archived.stat().st_size <= max_bytes
    assert tone_level(recording(tmp_path, row)[2000:14000], 440) > 0.4
    assert not (tmp_path / SPOOL_DIR / "t1-1.wav").exists()


def test_recovery_finalises_a_crashed_call_as_interrupted(tmp_path):
    catalogue = Catalogue(tmp_path)
    call_id, writer = spooled_call(tmp_path, catalogue, pcm(tone(440, 3.0)), close=False)
    time.sleep(0.3)
    writer._closing.set()           # the process dies: no close, no header patch
    writer._thread.join()
    catalogue.close()

    catalogue = Catalogue(tmp_path)
    [row] = recover(catalogue, tmp_path, "opus", 16000)
    assert row["id"] == call_id and row["state"] == "interrupted"
    assert row["duration_s"] == 3.0 and row["ended_at"] is not None
    assert tone_level(recording(tmp_path, row)[4000:20000], 440) > 0.4


def test_an_unreadable_spool_is_quarantined_not_deleted(tmp_path):
    catalogue = Catalogue(tmp_path)
    (tmp_path / SPOOL_DIR).mkdir()
    (tmp_path / SPOOL_DIR / "t1-1.wav").write_bytes(b"garbage")
    (tmp_path / SPOOL_DIR / "stray.wav").write_bytes(b"stray")
    call_id = catalogue.add_call(line="t1", direction="outgoing", started_at="2026-11-23T10:00:00.000Z",
                                 purpose="training", state="recording", spool=f"{SPOOL_DIR}/t1-1.wav")
    recover(catalogue, tmp_path, "opus", 16000)
    assert catalogue.get_call(call_id)["state"] == "interrupted"
    assert sorted(p.name for p in (tmp_path / QUARANTINE_DIR).iterdir()) == [f"{call_id}-t1-1.wav", "stray.wav"]


def test_the_catalogue_is_durable_and_migrated(tmp_path):
    catalogue = Catalogue(tmp_path)
    assert catalogue.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert catalogue.db.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
    assert catalogue.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_leftover_that_cannot_be_encoded_is_kept_and_does_not_stop_the_start(tmp_path, caplog):
    catalogue = Catalogue(tmp_path)
    (tmp_path / SPOOL_DIR).mkdir()
    writer = SpoolWriter(tmp_path / SPOOL_DIR / "t1-1.wav", 11025)   # a rate Opus cannot take
    writer.append(pcm(tone(440, 1.0, rate=11025)))
    writer.close()
    call_id = catalogue.add_call(line="t1", direction="outgoing", started_at="2026-11-23T10:00:00.000Z",
                                 purpose="training", state="recording", spool=f"{SPOOL_DIR}/t1-1.wav")
    assert recover(catalogue, tmp_path, "opus", 16000) == []
    assert "recovery failed" in caplog.text
    assert catalogue.get_call(call_id)["state"] == "recording"
    assert (tmp_path / SPOOL_DIR / "t1-1.wav").exists()
    # With a format that can take it, the next start recovers it.
    assert recover(catalogue, tmp_path, "flac", 16000)[0]["duration_s"] == 1.0


def test_the_recorder_process_loads_no_numpy():
    # About 14 MB of the recorder's resident memory, all day: its audio work is done without it.
    import subprocess
    import sys
    code = "import sys, appliance.cli, appliance.recorder; print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
