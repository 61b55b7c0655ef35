"""A catalogue whose disk fails writes mid-call costs no audio and, once the disk recovers, no row.

The catalogue lives on a small ext4 file system of its own, on a loop device: the data folder's
`catalogue.db` is a symlink to it (SQLite follows it and keeps its WAL next to the file), while
the spool and the archive stay in the data folder. Making the loop device's backing file
immutable turns every write the device gets into a block I/O error ("I/O error, dev loopN, …
op WRITE" in the kernel log), so SQLite's writes fail with a real "disk I/O error"
(SQLITE_IOERR); clearing the flag heals the device. The file system has no journal and keeps
going on errors: a journal whose commit fails is aborted and the file system stays read-only
until it is mounted again, which is another failure (a disk that does not recover).
"""

import gc
import os
import sqlite3
import subprocess
import time

import pytest

from conftest import (RATE, calls_json, iso_seconds, recording, simulated_cards, stop, tone, tone_level,
                      wait_for, write_config)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sets up a loop device and mounts it (root only)")

PREROLL_S = 2.0
TALK_S = 3.0
SECOND_TALK_S = 2.0
LEVEL = 0.3         # the line carries a 440 Hz tone at this amplitude throughout


class FailingDisk:
    """An ext4 file system on a loop device whose writes fail between `fail` and `heal`."""

    def __init__(self, folder):
        self.image = folder / "catalogue-disk.img"
        self.mount = folder / "catalogue-disk"
        self.mount.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-O", "^has_journal", str(self.image)], check=True)
        self.device = subprocess.run(["losetup", "--find", "--show", str(self.image)], check=True,
                                     capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", "-o", "errors=continue", self.device, str(self.mount)], check=True)

    def fail(self) -> None:
        subprocess.run(["chattr", "+i", str(self.image)], check=True)

    def heal(self) -> None:
        subprocess.run(["chattr", "-i", str(self.image)], check=True)

    def remove(self) -> None:
        self.heal()
        gc.collect()                    # connections of the recorder's ended threads
        if subprocess.run(["umount", str(self.mount)]).returncode != 0:
            subprocess.run(["umount", "-l", str(self.mount)], check=True)   # a connection left open
        subprocess.run(["losetup", "-d", self.device], check=True)


@pytest.fixture
def line(tmp_path, monkeypatch):
    """The recorder in this process on line t1, its catalogue on a FailingDisk, its pins on a
    MockFactory, its line carrying a steady tone. Yields (recorder, hook pin, disk); the test
    starts the recorder."""
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder
    from appliance.simulate import simulated

    disk = FailingDisk(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "catalogue.db").symlink_to(disk.mount / "catalogue.db")
    line_audio = (tone(440, 60, LEVEL) * 32767).astype("<i2").tobytes()
    alsa, feeders = simulated_cards(data, ["t1"], line_audio)
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
    factory = MockFactory()
    recorder = None
    try:
        config = simulated(load_config(write_config(tmp_path, recorder={"preroll_s": PREROLL_S})), data)
        recorder = Recorder(config, pin_factory=factory)
        yield recorder, factory.pin(17), disk
    finally:
        disk.heal()                     # so that stopping does not wait for a failing catalogue
        if recorder is not None:
            recorder.stop()
        stop(feeders)
        factory.reset()
        disk.remove()


def spool_size(data) -> int:
    [spool] = (data / "spool").iterdir()
    return spool.stat().st_size


def assert_whole(data, call, talk_s: float) -> None:
    """The call is archived and catalogued from its pre-roll to the end of the flash window after
    the hang-up, and the line's tone sounds in every quarter second of it."""
    assert call["state"] == "complete" and call["file"]
    assert PREROLL_S + talk_s + 0.5 < call["duration_s"] < PREROLL_S + talk_s + 1.0
    assert abs(iso_seconds(call["started_at"]) - iso_seconds(call["recording_started_at"]) - PREROLL_S) < 0.1
    heard = recording(data, call)
    assert abs(len(heard) / RATE - call["duration_s"]) < 0.05
    quarter = RATE // 4
    levels = [tone_level(heard[i:i + quarter], 440) for i in range(0, len(heard) - quarter + 1, quarter)]
    assert min(levels) > 0.7 * LEVEL, levels


def test_a_catalogue_disk_failing_writes_mid_call_delays_the_row_never_the_audio(line, caplog):
    recorder, hook, disk = line
    data = recorder.catalogue.path.parent
    caplog.set_level("INFO")
    recorder.start()
    time.sleep(PREROLL_S + 0.5)         # the pre-roll fills
    disk.fail()
    failed_at = time.monotonic()
    hook.drive_low()                    # off-hook while the catalogue's disk fails writes
    off_hook = time.time()
    time.sleep(1.0)
    early = spool_size(data)
    time.sleep(TALK_S - 1.0)
    assert spool_size(data) - early > 1.5 * RATE * 2            # the audio goes on to the disk…
    hook.drive_high()                   # …and on-hook, the disk still failing
    time.sleep(1.5)
    assert recorder.writer.refusing_since is not None            # the row's insert is being retried
    assert recorder.catalogue.calls() == []
    assert spool_size(data) > 44 + (PREROLL_S + TALK_S) * RATE * 2
    disk.heal()
    failed_for = time.monotonic() - failed_at

    assert wait_for(recorder.idle, 15), "the call was not catalogued once the disk recovered"
    [call] = recorder.catalogue.calls()
    assert abs(iso_seconds(call["started_at"]) - off_hook) < 0.3
    assert_whole(data, call, TALK_S)
    assert not list((data / "spool").iterdir())

    # The recorder told of the failure once and of the recovery once, without a traceback.
    refusals = [r for r in caplog.records if "refuses writes" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelname == "WARNING"
    error = refusals[0].args[0]
    assert isinstance(error, sqlite3.OperationalError) and error.sqlite_errorname.startswith("SQLITE_IOERR")
    assert "disk I/O error" in refusals[0].getMessage()
    [back] = [r for r in caplog.records if "takes writes again" in r.getMessage()]
    assert 0.5 * failed_for < back.args[0] < failed_for + 2.5
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]

    # Still well: a call after the recovery is recorded as usual.
    assert recorder.problem(30.0) is None
    hook.drive_low()
    time.sleep(SECOND_TALK_S)
    hook.drive_high()
    assert wait_for(recorder.idle, 10)
    first, second = calls_json(data)
    assert first["id"] == call["id"] and first["sha256"] == call["sha256"]
    assert_whole(data, second, SECOND_TALK_S)
    assert not list((data / "spool").iterdir())
    assert recorder.problem(30.0) is None
