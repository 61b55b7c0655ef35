"""Capture: one thread per line reads the sound card period by period into a pre-roll ring buffer,
and into the current call's spool while a call is recorded.

The timeline stays true: after an overrun or while the card is gone, silence stands in for the
lost time, so offsets and durations taken from sample counts match the wall clock. A card that
disappears is reopened by name with back-off; the thread never dies of an ALSA error.
"""

import errno
import logging
import threading
import time
from collections import deque
from typing import Protocol

import alsaaudio

from appliance.live import LevelMeter
from appliance.service import Backoff

from appliance.store.spool import SAMPLE_BYTES

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0
MAX_GAP_FILL_S = 600.0  # a longer outage is not padded: the call is marked instead
MAX_AHEAD_S = 1.0       # how far a device may run ahead of the wall clock before it counts as broken
DRIFT_FOLLOWED = 0.001  # a card's clock against the wall clock: 1000 ppm, far beyond any crystal's


class Sink(Protocol):
    """Where a call's audio goes (a SpoolWriter)."""

    def append(self, pcm: bytes) -> None: ...


class CaptureStatus(Protocol):
    """Told about capture faults of the call being recorded."""

    def capture_fault(self, kind: str) -> None: ...


def open_capture(device: str, rate: int, channels: int, period_frames: int) -> alsaaudio.PCM:
    """Open an ALSA capture PCM for signed 16-bit interleaved audio."""
    return alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, device=device, rate=rate,
                         channels=channels, format=alsaaudio.PCM_FORMAT_S16_LE,
                         periodsize=period_frames)


class Backlog:
    """What a capture stream took but has not delivered, from the wall clock and the frames read.
    Its lag at the reads that keep up is its floor (which follows the card's clock drift); what
    exceeds the floor when it overruns was lost. (The time of the last read says nothing then: a
    read just before an overrun returns what it had collected, late.)"""

    def __init__(self, rate: int, started: float):
        self.rate, self.started = rate, started
        self.frames = 0
        self.floor: float | None = None     # the least lag seen, rising by DRIFT_FOLLOWED at most
        self.at = started

    def lag(self, now: float) -> float:
        """Seconds of audio the card took since the stream started beyond the frames read."""
        return now - self.started - self.frames / self.rate

    def read(self, frames: int, now: float) -> None:
        """A read returned `frames` at `now`."""
        self.frames += frames
        lag = self.lag(now)
        self.floor = lag if self.floor is None else min(self.floor + DRIFT_FOLLOWED * (now - self.at), lag)
        self.at = now

    def lost(self, now: float) -> int:
        """Frames the card took but will never deliver (it overran at `now`)."""
        lag = min(self.lag(now), MAX_GAP_FILL_S) - (self.floor or 0.0)
        return max(0, int(lag * self.rate))


class Capture(threading.Thread):
    """Reads one capture device for as long as the recorder runs."""

    def __init__(self, device: str, rate: int, period_frames: int, preroll_s: float,
                 channels: int = 1, status: CaptureStatus | None = None):
        super().__init__(name=f"capture-{device}", daemon=True)
        self.device = device
        self.rate = rate
        self.channels = channels
        self.period_frames = period_frames
        self.frame_bytes = channels * SAMPLE_BYTES
        self.status = status
        self.frames_read = 0
        self.last_read: float | None = None   # monotonic time of the last good read (watchdog)
        self.opened_at: float | None = None   # monotonic time the device was last opened (watchdog)
        self.connected = threading.Event()
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._preroll_limit = int(preroll_s * rate) * self.frame_bytes
        self._sink: Sink | None = None
        self.meter = LevelMeter()
        self.tap = None     # called with every period, idle or not (caller ID from the line audio listens there)
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- what the line controller uses -------------------------------------------------------------

    def start_recording(self, sink: Sink, with_preroll: bool = True) -> float:
        """Send audio to `sink` from now on, preceded by the pre-roll; return the monotonic time
        of the first frame given to it."""
        with self._lock:
            held = self._preroll_bytes if with_preroll else 0
            if with_preroll:
                for chunk in self._preroll:
                    sink.append(chunk)
            self._sink = sink
            return time.monotonic() - held / self.frame_bytes / self.rate

    def clear_preroll(self) -> None:
        """Forget the pre-roll (a caller declined: none of their words may stay, even in RAM)."""
        with self._lock:
            self._preroll.clear()
            self._preroll_bytes = 0

    def stop_recording(self) -> None:
        """Stop sending audio to the current sink."""
        with self._lock:
            self._sink = None

    def stop(self) -> None:
        """Ask the thread to end after the current read."""
        self._stopping.set()

    # -- the thread ----------------------------------------------------------------------------------

    def _deliver(self, pcm: bytes) -> None:
        with self._lock:
            self._preroll.append(pcm)
            self._preroll_bytes += len(pcm)
            while self._preroll and self._preroll_bytes - len(self._preroll[0]) >= self._preroll_limit:
                self._preroll_bytes -= len(self._preroll.popleft())
            if self._sink is not None:
                self._sink.append(pcm)
        self.meter.add(pcm)
        if self.tap is not None:
            self.tap(pcm)

    def _fill_gap(self, since: float | None) -> None:
        """Deliver silence for the audio lost since the last good read (beyond one period)."""
        if since is None:
            return
        lost = min(time.monotonic() - since, MAX_GAP_FILL_S) - self.period_frames / self.rate
        frames = int(lost * self.rate)
        if frames > 0:
            self._deliver(bytes(frames * self.frame_bytes))

    def _fault(self, kind: str) -> None:
        with self._lock:
            recording = self._sink is not None
        if recording and self.status is not None:
            self.status.capture_fault(kind)

    def run(self) -> None:
        backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        outage_logged = False
        while not self._stopping.is_set():
            try:
                pcm = open_capture(self.device, self.rate, self.channels, self.period_frames)
            except alsaaudio.ALSAAudioError as exc:
                if not outage_logged:
                    log.error("cannot open capture device %s: %s; retrying every %.0f s at most",
                              self.device, exc, RETRY_MAX_S)
                    outage_logged = True
                self._stopping.wait(backoff.next())
                continue
            if outage_logged:
                log.warning("capture device %s is back", self.device)
            self._fill_gap(self.last_read)
            outage_logged = False
            backoff.reset()
            self.opened_at = time.monotonic()
            self.connected.set()
            try:
                self._read_until_error(pcm)
            finally:
                self.connected.clear()
                pcm.close()

    def _read_until_error(self, pcm: alsaaudio.PCM) -> None:
        stream = Backlog(self.rate, time.monotonic())
        while not self._stopping.is_set():
            try:
                length, data = pcm.read()
                now = time.monotonic()
                stream.read(max(length, 0), now)
                if stream.lag(now) < -MAX_AHEAD_S:
                    # A source that delivers faster than real time is broken (a dead feed
                    # returning stale buffers): what it gives is not the line.
                    raise alsaaudio.ALSAAudioError("delivers audio faster than real time")
            except alsaaudio.ALSAAudioError as exc:
                log.error("capture device %s failed: %s; reopening", self.device, exc)
                self._fault("capture_errors")
                return
            if length == -errno.EPIPE:
                log.warning("overrun on capture device %s", self.device)
                self._fault("overruns")
                if lost := stream.lost(now):
                    self._deliver(bytes(lost * self.frame_bytes))
                stream = Backlog(self.rate, now)        # the stream starts again with the next read
                self.last_read = now
                continue
            if length <= 0:
                self._stopping.wait(self.period_frames / self.rate)
                continue
            self.last_read = now
            self.frames_read += length
            self._deliver(data)
