"""A disk filled to the last byte mid-call costs no call: the recordings' file system is a small
tmpfs, the recorder runs on it with a reserve, and a filler file takes every byte left while a
call is recorded. Without held calls the cleaner makes room and takes the reserve again; with only
held calls the call goes on into the reserve and the alarm is raised where it can be read."""

import errno
import os
import subprocess
import time

import pytest

from appliance.clock import iso_utc
from appliance.live import read_live
from conftest import record_call, simulated_cards, stop, wait_for, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root only)")

OLD_CALLS = 6           # of 60 s each, as WAV: about 1 MB each
TALK_S = 5.0


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs for the data folder."""
    mount = tmp_path / "data"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder) -> int:
    """Write a file that takes every byte left on the file system; returns its size."""
    size, chunk = 0, 1 << 16
    with open(folder / "filler", "wb", buffering=0) as f:
        while chunk:
            try:
                size += f.write(bytes(chunk))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                chunk //= 2
    return size


@pytest.mark.parametrize("held", [False, True])
def test_a_disk_filled_to_the_last_byte_mid_call_costs_no_audio(tmp_path, small_disk, monkeypatch, held):
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder
    from appliance.simulate import simulated
    from appliance.store.catalogue import Catalogue

    data = small_disk
    catalogue = Catalogue(data)
    old = [record_call(catalogue, data, seconds=60, fmt="wav", started_at=iso_utc(time.time() - 3600 * hours))
           for hours in range(OLD_CALLS, 0, -1)]
    if held:
        with catalogue.transaction() as db:
            db.execute("UPDATE calls SET held = 1, hold_reason = 'dispute'")
    catalogue.close()
    alsa, feeders = simulated_cards(tmp_path / "sim", ["t1"])
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
    config = write_config(tmp_path, recorder={"format": "wav", "runtime_dir": str(tmp_path / "run")})
    config.write_text(config.read_text() + "\n[store]\nreserve_mb = 2\nmin_free_mb = 1\nmin_free_hours = 0.0\n"
                      "cleaner_interval_s = 3600.0\n")
    factory = MockFactory()
    recorder = Recorder(simulated(load_config(config), data), pin_factory=factory)
    try:
        recorder.start()
        assert wait_for(lambda: recorder.reserve.held, 5), "the reserve was not taken at the start"
        time.sleep(2.5)                     # the pre-roll fills
        factory.pin(17).drive_low()         # off-hook
        time.sleep(1.5)
        assert fill(data) > 0
        time.sleep(TALK_S - 1.5)
        factory.pin(17).drive_high()
        assert wait_for(recorder.idle, 20)
        rows = recorder.catalogue.calls()
        [call] = [row for row in rows if row["id"] not in {c["id"] for c in old}]
        # Whole: the pre-roll, every second off-hook, the flash window after the hang-up.
        assert call["state"] == "complete" and call["file"]
        assert 2.0 + TALK_S + 0.5 < call["duration_s"] < 2.0 + TALK_S + 1.0
        assert all(row["state"] in ("complete", "missed") for row in rows)
        assert not list((data / "spool").iterdir())
        if held:
            assert len(rows) == OLD_CALLS + 1                   # no held call was touched
            assert "only held or restricted calls can go" in recorder.store.alarm()
            live = read_live(recorder.config.recorder.live_dir)
            assert "recording goes on into the reserve" in live["storage_alarm"]
        else:
            assert len(rows) < OLD_CALLS + 1                    # the oldest made room…
            assert wait_for(lambda: recorder.reserve.held, 5)   # …and the reserve is back
            assert recorder.store.alarm() is None
    finally:
        recorder.stop()
        stop(feeders)
        factory.reset()
