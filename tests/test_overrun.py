"""An overrun of the sound card mid-call: the call counts it and its recording keeps a true timeline.

The line is the `testcard` ALSA plugin (tests/alsa_card): a capture card whose hardware pointer
follows the monotonic clock and which overruns, through real alsa-lib, when its reader falls a
buffer behind. The recorder runs in a process of its own (this module, run as a script), and the
test stops that whole process for a while with SIGSTOP, as a stalled system would.

The line carries a counter: each sample holds its position on the line (modulo 65535, plus one,
so that silence is never part of it), and each sample of a recording tells where on the line it
was taken."""

import errno
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from alsa_card import alsa_config_path
from conftest import RATE, iso_seconds, wait_for, write_config

PERIOD = RATE // 50          # the card alone is read in 20 ms periods
WRAP = 65535
STALL_S = 0.6


def counter(seconds: float, channels: int = 1) -> bytes:
    """The line's signal: sample n (interleaved over the channels) holds n mod 65535, plus one."""
    n = np.arange(int(seconds * RATE) * channels)
    return (n % WRAP + 1).astype("<u2").tobytes()


def line_positions(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the non-silent samples, and the position on the line each was taken at
    (counted from the first one's, the counter unwrapped)."""
    heard = np.flatnonzero(samples)
    values = samples[heard].view("<u2").astype(np.int64) - 1
    steps = np.diff(values) % WRAP
    return heard, values[0] + np.concatenate([[0], np.cumsum(steps)])


# -- the card alone ------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2])
def test_the_card_delivers_its_file_in_real_time_and_overruns_when_read_too_late(tmp_path, monkeypatch,
                                                                               channels):
    import alsaaudio

    raw = tmp_path / "line.raw"
    raw.write_bytes(counter(1.0, channels))                 # one second of line, then silence
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa_config_path(tmp_path, {"card": raw}))
    pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, device="card", rate=RATE,
                        channels=channels, format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=PERIOD)
    try:
        buffer = pcm.info()["buffer_size"]
        assert pcm.info()["rate"] == RATE and pcm.info()["channels"] == channels
        began = time.monotonic()
        reads = [pcm.read() for _ in range(25)]
        took = time.monotonic() - began
        assert all(length == PERIOD for length, _ in reads)
        assert b"".join(data for _, data in reads) == counter(0.5, channels)
        assert took > 0.5 - 0.02                           # half a second of line takes half a second

        time.sleep(3 * buffer / RATE)                      # the reader falls behind by more than a buffer
        slept = time.monotonic()
        assert pcm.read() == (-errno.EPIPE, b"")
        tail = []
        while sum(len(data) for data in tail) < 0.4 * RATE * 2 * channels:
            length, data = pcm.read()                      # pyalsaaudio prepares, the card restarts
            assert length == PERIOD
            tail.append(data)
        read_by = time.monotonic()
    finally:
        pcm.close()
    samples = np.frombuffer(b"".join(tail), "<i2")
    values = samples.view("<u2").astype(np.int64)
    first = int(values[0] - 1) // channels                   # the frame the card restarted at
    # What the line carried while nobody read is lost; the card resumes where the clock is.
    assert first >= 25 * PERIOD + (slept - began - took) * RATE * 0.9
    assert first / RATE <= read_by - began
    # Then frame after frame up to the end of the file, and silence past it.
    past_end = max(0, RATE - first) * channels
    assert np.array_equal(values[:past_end], np.arange(first * channels, RATE * channels) + 1)
    assert not values[past_end:].any() and len(values) > past_end


# -- the recorder ----------------------------------------------------------------------------------

def recorder_process(config: Path) -> None:
    """The recorder, as `callrec run` and `callrec simulate` build it, with its pins on a
    MockFactory: `off-hook` and `on-hook` on stdin lift and replace the handset; each is answered
    on stdout with a JSON line, the last once the call is finalised."""
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    settings = load_config(config)
    factory = MockFactory()
    recorder = Recorder(settings, pin_factory=factory)
    line = recorder.lines[0]
    hook = factory.pin(settings.line[0].hook_pin)

    def say(**fields):
        print(json.dumps(fields), flush=True)

    recorder.start()
    try:
        wait_for(line.capture.connected.is_set, 10)
        time.sleep(settings.recorder.preroll_s + 0.2)      # the pre-roll fills
        say(ready=True)
        for command in sys.stdin:
            if command.strip() == "off-hook":
                hook.drive_low()                           # active low
                say(off_hook=time.time())
            elif command.strip() == "on-hook":
                hook.drive_high()
                deadline = time.monotonic() + 10
                while line.call is not None and time.monotonic() < deadline:
                    time.sleep(0.002)                      # the recording ends with the call
                stopped = time.time()
                wait_for(recorder.idle, 30)
                say(recording_stopped=stopped)
                break
    finally:
        recorder.stop()


def answer(process: subprocess.Popen, timeout: float = 30.0) -> dict:
    """The recorder process's next JSON line."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the recorder process did not answer"
    line = process.stdout.readline()
    assert line, f"the recorder process ended:\n{process.stderr.read()}"
    return json.loads(line)


def tell(process: subprocess.Popen, command: str) -> None:
    process.stdin.write(command + "\n")
    process.stdin.flush()


@pytest.fixture(scope="module")
def stalled_call(tmp_path_factory):
    """An outgoing call of about 2.2 s on a line whose recorder stops for STALL_S in the middle of
    it. Returns the call's row, its recording (int16 samples), when the stall began (epoch
    seconds), how long it lasted, when the recording stopped, and the recorder's log."""
    from appliance.store.catalogue import Catalogue

    folder = tmp_path_factory.mktemp("overrun")
    data = folder / "data"
    raw = folder / "line.raw"
    raw.write_bytes(counter(60.0))
    alsa = alsa_config_path(folder, {"line_in": raw}, extra='pcm.line_out { type file slave.pcm { type null } '
                                                           'file "/dev/null" format "raw" }\n')
    config = write_config(folder, recorder={"preroll_s": 0.5, "format": "wav", "data_dir": str(data)},
                          line={"capture": "line_in", "playback": "line_out"})
    process = subprocess.Popen([sys.executable, __file__, str(config)], env={**os.environ, "ALSA_CONFIG_PATH": alsa},
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert answer(process)["ready"]
        tell(process, "off-hook")
        answer(process)
        time.sleep(0.8)
        stall_began = time.time()
        process.send_signal(signal.SIGSTOP)
        time.sleep(STALL_S)
        process.send_signal(signal.SIGCONT)
        stall = time.time() - stall_began
        time.sleep(0.8)
        tell(process, "on-hook")
        stopped = answer(process)["recording_stopped"]
        log = process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()
    assert process.returncode == 0, log
    catalogue = Catalogue(data)
    [call] = catalogue.calls()
    catalogue.close()
    with wave.open(str(data / call["file"])) as recording:
        assert recording.getframerate() == RATE and recording.getnchannels() == 1
        samples = np.frombuffer(recording.readframes(recording.getnframes()), "<i2")
    return call, samples, stall_began, stall, stopped, log


def test_an_overrun_mid_call_is_logged_and_counted_against_the_call(stalled_call):
    call, _, _, _, _, log = stalled_call
    assert call["state"] == "complete"
    assert call["overruns"] >= 1
    assert "overrun on capture device line_in" in log


def test_the_recording_lasts_as_long_as_the_call_on_the_wall_clock(stalled_call):
    call, samples, _, _, stopped, _ = stalled_call
    wall = stopped - iso_seconds(call["recording_started_at"])
    assert call["duration_s"] == pytest.approx(len(samples) / RATE, abs=0.001)
    assert abs(call["duration_s"] - wall) < 0.1, f"{call['duration_s']:.3f} s recorded in {wall:.3f} s"


def test_the_lost_stretch_is_silence_of_its_length_and_the_audio_after_it_is_in_place(stalled_call):
    call, samples, stall_began, stall, _, _ = stalled_call
    heard, positions = line_positions(samples)
    [jump] = np.flatnonzero(np.diff(positions) != 1)       # the line runs on unbroken but for the stall
    lost = (positions[jump + 1] - positions[jump] - 1) / RATE
    assert STALL_S - 0.1 < lost < stall + 0.3               # the card lost about what the stall lasted
    last, resumed = heard[jump], heard[jump + 1]
    silence = (resumed - last - 1) / RATE
    assert abs(silence - lost) < 0.05, f"{silence:.3f} s of silence for {lost:.3f} s lost"
    # Nowhere else is there silence: the recording is the line, sample after sample.
    assert heard[0] == 0 and heard[-1] == len(samples) - 1
    assert np.all(np.delete(np.diff(heard), jump) == 1)
    # The silence sits where the stall happened in the call…
    stall_at = stall_began - iso_seconds(call["recording_started_at"])
    assert abs((last + 1) / RATE - stall_at) < 0.15
    # …and what follows it is heard as far into the recording as it was said on the line.
    said_at = (positions[jump + 1] - positions[0]) / RATE
    assert abs(resumed / RATE - said_at) < 0.05, f"heard at {resumed / RATE:.3f} s, said at {said_at:.3f} s"


if __name__ == "__main__":
    recorder_process(Path(sys.argv[1]))
