"""A recorder killed with SIGKILL mid-call loses about a second at most, in the call's first second
as in any other (the pre-roll reaches the disk when the call starts): the next start recovers it."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from appliance.store.catalogue import Catalogue
from conftest import RATE, calls_json, callrec, iso_seconds, recording, tone, tone_level, write_config, \
    write_scenario, write_wav

SEGMENT_S = 0.5


def segment_freq(k: int) -> float:
    """The source plays 400 Hz, 500 Hz, … each for half a second: frequency tells the time."""
    return 400.0 + 100.0 * k


def killed_during_the_call(config, scenario, data, kill_after_s: float) -> tuple[float, float]:
    """Run `callrec simulate` and kill it (SIGKILL, its whole process group) `kill_after_s` into
    its first call; returns (the off-hook time, the time of the kill), epoch seconds."""
    recorder = subprocess.Popen(
        [sys.executable, "-m", "appliance", "simulate", str(scenario), "--config", str(config),
         "--data", str(data)], start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        rows = []
        while not rows and time.monotonic() < deadline:
            time.sleep(0.1)
            if (data / "catalogue.db").exists():
                catalogue = Catalogue(data)
                rows = catalogue.calls("state = 'recording'")
                catalogue.close()
        assert rows, "the call never started"
        off_hook = iso_seconds(rows[0]["started_at"])
        time.sleep(max(0.0, off_hook + kill_after_s - time.time()))
        killed_at = time.time()
        os.killpg(recorder.pid, signal.SIGKILL)
    finally:
        recorder.wait()
    return off_hook, killed_at


@pytest.mark.parametrize("kill_after_s", [0.6, 6.3])
def test_a_killed_recorder_is_recovered_up_to_a_second_before_the_kill(tmp_path, kill_after_s):
    audio = np.concatenate([tone(segment_freq(k), SEGMENT_S, 0.4) for k in range(30)])
    source = write_wav(tmp_path / "steps.wav", audio)
    config = write_config(tmp_path)
    scenario = write_scenario(tmp_path, [{"direction": "outgoing", "at": 0.5, "audio": str(source)}])
    data = tmp_path / "data"
    off_hook, killed_at = killed_during_the_call(config, scenario, data, kill_after_s)

    empty = tmp_path / "empty.toml"
    empty.write_text("")
    restart = callrec("simulate", str(empty), "--config", str(config), "--data", str(data))
    assert "recovered call" in restart.stderr

    [call] = calls_json(data)
    assert call["state"] == "interrupted" and call["file"] and call["sha256"]
    preroll = off_hook - iso_seconds(call["recording_started_at"])
    heard_until = call["duration_s"] - preroll           # seconds of the source in the recording
    lost = (killed_at - off_hook) - heard_until
    print(f"\nkill -9 {killed_at - off_hook:.2f} s into the call lost {lost:.2f} s of audio")
    assert -0.1 < lost <= 1.3         # one flush interval (1 s), and the time to notice the call
    assert abs(iso_seconds(call["ended_at"]) - killed_at) <= 2.0
    # The recovered audio is the line's: the last whole segment has the right frequency.
    samples = recording(data, call)
    k = int(heard_until / SEGMENT_S) - 1
    if k >= 0:
        at = int((preroll + k * SEGMENT_S + 0.1) * RATE)
        assert tone_level(samples[at:at + int(0.3 * RATE)], segment_freq(k)) > 0.25
