"""The simulated line's audio source: writes a timeline of raw PCM into a FIFO at the pace of a
sound card, so an ALSA `file`-plugin capture PCM reading that FIFO behaves like a real card.

Runs as its own process (`python -m appliance.feeder`): opening a PCM on a FIFO blocks, holding
the GIL, until the writer has opened it, so the writer cannot be a thread of the reader.
Before `t0` and after the timeline it writes line hiss; it ends when the reader goes away.

The file plugin returns a whole period even when the FIFO held less (the rest is stale data), so
the feeder writes whole periods only, each in one write: pipe writes up to PIPE_BUF are atomic,
and a reader asking for one period then always gets exactly one.

On an analog tap the capture hears what the appliance plays into the line. With `--line-out`, the
feeder follows the file the simulated playback device writes and mixes what appears in it into
the line from that moment on, as the line would carry it.

With `--loop` the timeline repeats for ever (the demo that keeps going), and each play is emptied
once heard: the plugin names a new play after the first free name, so the name stays taken and
the disk does not fill with notices.
"""

import argparse
import os
import signal
import time

import numpy as np

HISS = 30


class LineOut:
    """Follows the playback device's output files; hands out what was played, period by period.

    The simulated device does not truncate its file when opened again: each play after the first
    goes to a new file, `<file>.0001`, `<file>.0002`… (the file plugin's way), followed in turn.
    """

    def __init__(self, path: str | None, empty_heard: bool = False):
        self.path = path
        self.empty_heard = empty_heard
        self.plays = 0                  # the file being followed: the first, or its numbered successor
        self.position = 0
        self.queued = np.zeros(0, dtype=np.int32)

    def take(self, frames: int) -> np.ndarray:
        """Up to `frames` samples of what was played and not yet heard."""
        if self.path is not None:
            self._follow()
        out, self.queued = self.queued[:frames], self.queued[frames:]
        return out

    def _name(self, plays: int) -> str:
        return self.path if plays == 0 else f"{self.path}.{plays:04d}"

    def _follow(self) -> None:
        while True:
            following = os.path.exists(self._name(self.plays + 1))     # read the rest, then the next
            try:
                size = os.path.getsize(self._name(self.plays))
            except FileNotFoundError:
                return
            if size < self.position:
                self.position = 0
            size -= size % 2
            if size > self.position:
                with open(self._name(self.plays), "rb") as f:
                    f.seek(self.position)
                    new = np.frombuffer(f.read(size - self.position), dtype="<i2").astype(np.int32)
                self.position = size
                self.queued = np.concatenate([self.queued, new])
            if not following:
                return
            if self.empty_heard:
                os.truncate(self._name(self.plays), 0)
            self.plays, self.position = self.plays + 1, 0


def feed(raw_path: str, fifo: str, rate: int, t0: float, period_frames: int, speed: float = 1.0,
         line_out: str | None = None, loop: bool = False) -> None:
    """Write `raw_path` (s16 mono) into `fifo` so that its first sample is due at monotonic `t0`,
    `speed` times faster than real time (benchmarks), mixing in what is played to `line_out`;
    with `loop`, the timeline over and over."""
    timeline = np.fromfile(raw_path, dtype="<i2")
    hiss = np.random.default_rng(1).normal(0, HISS, rate).astype("<i2")
    played = LineOut(line_out, empty_heard=loop)
    period_s = period_frames / rate / speed
    with open(os.open(fifo, os.O_WRONLY), "wb", buffering=0) as out:   # never create a plain file
        written = time.monotonic()          # the audio up to this instant has been written
        while True:
            while time.monotonic() - written >= period_s:
                start = int(round((written - t0) * rate * speed))
                chunk = _slice(timeline, hiss, start, period_frames, loop).astype(np.int32)
                mix = played.take(period_frames)
                chunk[:len(mix)] += mix
                out.write(np.clip(chunk, -32768, 32767).astype("<i2").tobytes())
                written += period_s
            time.sleep(max(0.0, written + period_s - time.monotonic()))


def _slice(timeline: np.ndarray, hiss: np.ndarray, start: int, frames: int, loop: bool = False) -> np.ndarray:
    """Samples [start, start+frames) of the timeline (repeated, with `loop`), hiss where it has none."""
    if loop and start >= 0:
        return timeline.take(np.arange(start, start + frames), mode="wrap")
    out = np.resize(hiss, frames)
    lo, hi = max(start, 0), min(start + frames, len(timeline))
    if lo < hi:
        out[lo - start:hi - start] = timeline[lo:hi]
    return out


def main() -> None:
    """Entry point of the feeder process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw")
    parser.add_argument("fifo")
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--t0", type=float, required=True, help="monotonic time of sample 0")
    parser.add_argument("--period-frames", type=int, required=True)
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (benchmarks)")
    parser.add_argument("--line-out", help="the playback device's output file, mixed into the line")
    parser.add_argument("--loop", action="store_true", help="repeat the timeline for ever")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # Ctrl-C reaches the whole process group: the process that started the feeder stops it, after
    # the recorder, so the line carries audio until the last call is finalised.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        feed(args.raw, args.fifo, args.rate, args.t0, args.period_frames, args.speed, args.line_out, args.loop)
    except BrokenPipeError:
        os._exit(0)   # the recorder closed the capture device or died


if __name__ == "__main__":
    main()
