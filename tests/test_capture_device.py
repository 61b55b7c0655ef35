"""Capture keeps going when the sound card is missing or goes away, and keeps a true timeline."""

import os
import time

import pytest

from appliance.analog.capture import Capture
from appliance.store.spool import SpoolWriter, repair_header
from conftest import RATE, feed, tone, wait_for, write_wav

PERIOD = RATE // 50


class Faults:
    """Collects the faults capture reports against the call being recorded."""

    def __init__(self):
        self.kinds = []

    def capture_fault(self, kind: str) -> None:
        self.kinds.append(kind)


@pytest.fixture
def line(tmp_path, monkeypatch):
    """A capture PCM whose FIFO does not exist yet: the card is unplugged."""
    fifo = tmp_path / "line.fifo"
    rc = tmp_path / "asoundrc"
    rc.write_text(f'pcm.card {{ type file\n slave.pcm {{ type null }}\n file "/dev/null"\n'
                  f' infile "{fifo}"\n format "raw" }}\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{rc}")
    audio = write_wav(tmp_path / "a.wav", tone(440, 60, 0.3))
    raw = tmp_path / "a.raw"
    raw.write_bytes(audio.read_bytes()[44:])
    feeders, held = [], []

    def plug(capture: Capture):
        """Plug the card in: the capture opens it, then audio starts flowing in real time."""
        os.mkfifo(fifo)
        # Hold the FIFO open both ways while "plugged": a capture thread opening it before any
        # writer exists would block holding the GIL. The feeder starts once capture is attached,
        # so that no backlog builds up in the pipe, as none would in a card.
        held.append(os.open(fifo, os.O_RDWR))
        assert wait_for(capture.connected.is_set, 8.0)
        feeders.append(feed(raw, fifo, PERIOD))

    def unplug():
        fifo.unlink()              # first, so that no reopen can block on a FIFO without writer
        os.close(held.pop())
        feeders[-1].kill()
        feeders[-1].wait()

    yield plug, unplug
    for feeder in feeders:
        feeder.kill()
        feeder.wait()
    for fd in held:
        os.close(fd)


def test_capture_waits_for_a_missing_card_then_records_in_real_time(line, caplog):
    plug, _ = line
    capture = Capture("card", RATE, PERIOD, preroll_s=2.0)
    capture.start()
    try:
        time.sleep(1.0)
        assert capture.is_alive() and not capture.connected.is_set()
        assert "cannot open capture device card" in caplog.text
        plug(capture)
        assert wait_for(lambda: capture.frames_read > RATE // 2, 5.0)
        before, t = capture.frames_read, time.monotonic()
        time.sleep(2.0)
        rate = (capture.frames_read - before) / (time.monotonic() - t)
        assert abs(rate - RATE) < 0.05 * RATE
    finally:
        capture.stop()
        capture.join(2)


def test_a_card_lost_mid_call_is_logged_counted_and_padded_so_the_duration_stays_true(line, tmp_path):
    plug, unplug = line
    faults = Faults()
    capture = Capture("card", RATE, PERIOD, preroll_s=0.0, status=faults)
    capture.start()
    try:
        plug(capture)
        spool = SpoolWriter(tmp_path / "call.wav", RATE, flush_interval=0.2)
        capture.start_recording(spool)
        began = time.monotonic()
        time.sleep(1.0)
        unplug()
        assert wait_for(lambda: not capture.connected.is_set(), 3.0)
        time.sleep(2.0)
        plug(capture)
        time.sleep(1.0)
        capture.stop_recording()
        elapsed = time.monotonic() - began
        spool.close()
    finally:
        capture.stop()
        capture.join(2)
    assert capture.is_alive() is False
    assert faults.kinds == ["capture_errors"]
    recorded = repair_header(tmp_path / "call.wav") / RATE
    # Silence stands in for the outage; what the dead feed returned before it was caught
    # (at most a second) may come on top.
    assert elapsed - 0.3 < recorded < elapsed + 1.3
