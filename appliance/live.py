"""The recorder's live state for the web UI and `callrec doctor`: each line's state and input level,
published as `live.json` in the runtime folder (tmpfs on the appliance) about twice a second.

The web UI never touches the hardware: this file is all it knows of what the lines are doing.
"""

import array
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from appliance import __version__
from appliance.clock import clock_synchronised, iso_utc
from appliance.loudest import loudest
from appliance.service import Service

log = logging.getLogger(__name__)

LIVE_NAME = "live.json"
PID_NAME = "recorder.pid"
PUBLISH_INTERVAL_S = 0.5
FRESH_S = 5.0           # an older file means the recorder is not running
CLIP_LEVEL = 32000      # a sample this close to full scale counts as clipping
FOLD_BYTES = 8192       # audio kept unmeasured at most (about half a second at 8 kHz mono)
HYPOT_ARGS = 1 << 16    # math.hypot's sum of squares stays exact (under 2**53) for this many samples


class LevelMeter:
    """Peak and RMS of the audio captured since the last reading.

    The capture thread only queues each period; the levels are taken over half a second of audio at
    once (or at the reading), the sum of squares by math.hypot and the peak by bytes operations,
    without a Python step per sample: measured period by period, the meter cost the capture thread
    more CPU than reading the card."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._squares, self._samples, self._peak = 0, 0, 0

    def add(self, pcm: bytes) -> None:
        """Count one period of 16-bit mono PCM (cheap: the capture thread calls it)."""
        with self._lock:
            self._pending.append(pcm)
            self._pending_bytes += len(pcm)
            if self._pending_bytes >= FOLD_BYTES:
                self._fold()

    def _fold(self) -> None:
        """Measure the queued audio into the running figures (the lock held)."""
        pcm = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        if not pcm:
            return
        samples = array.array("h", pcm)
        # Every sample: a tone at a multiple of an eighth of the rate (1 kHz at 8 kHz) would read
        # anything from silence to its peak through every 4th sample.
        for start in range(0, len(samples), HYPOT_ARGS):
            self._squares += round(math.hypot(*samples[start:start + HYPOT_ARGS]) ** 2)
        self._samples += len(samples)
        self._peak = max(self._peak, loudest(pcm, samples))

    def read(self) -> dict:
        """Levels in dBFS since the last reading (None when nothing was captured), and clipping."""
        with self._lock:
            self._fold()
            squares, samples, peak = self._squares, self._samples, self._peak
            self._reset()
        if samples == 0:
            return {"level_dbfs": None, "peak_dbfs": None, "clipping": False}
        rms = math.sqrt(squares / samples)
        return {"level_dbfs": _dbfs(rms), "peak_dbfs": _dbfs(peak), "clipping": peak >= CLIP_LEVEL}


def _dbfs(value: float) -> float:
    return round(20 * math.log10(value / 32768), 1) if value > 0 else -120.0


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class LivePublisher(Service):
    """Writes the recorder's live state every half second until stopped; removes it at the end."""

    def __init__(self, folder: Path, snapshot, storage_alarm=lambda: None):
        super().__init__("live")
        self.folder = Path(folder)
        self.snapshot = snapshot        # returns the list of line states
        # Here too, not only in the catalogue: a RAM folder can be written when the disk is full.
        self.storage_alarm = storage_alarm

    def serve(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self.folder / PID_NAME, f"{os.getpid()}\n")
        synced, synced_checked = None, 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - synced_checked > 10:
                synced, synced_checked = clock_synchronised(), now
            try:
                state = {"updated_at": iso_utc(time.time()), "pid": os.getpid(), "version": __version__,
                         "clock_synced": synced, "storage_alarm": self.storage_alarm(), "lines": self.snapshot()}
                write_atomically(self.folder / LIVE_NAME, json.dumps(state))
            except Exception:
                log.exception("cannot publish the live state in %s", self.folder)
            self.wait(PUBLISH_INTERVAL_S)
        for name in (LIVE_NAME, PID_NAME):
            (self.folder / name).unlink(missing_ok=True)

    def stop(self, timeout: float | None = 5) -> None:
        """Stop publishing and remove the files (so nobody takes a stopped recorder for running)."""
        super().stop(timeout)


def read_live(folder: Path, fresh_s: float = FRESH_S) -> dict | None:
    """The recorder's live state, or None when it is missing, unreadable or stale (not running)."""
    path = Path(folder) / LIVE_NAME
    try:
        if time.time() - path.stat().st_mtime > fresh_s:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recorder_pid(folder: Path) -> int | None:
    """The running recorder's process id, from its pid file next to a fresh live state."""
    if read_live(folder) is None:
        return None
    try:
        return int((Path(folder) / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
