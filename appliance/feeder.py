"""The simulated line's audio source: writes a timeline of raw PCM into a FIFO at the pace of a
sound card, so an ALSA `file`-plugin capture PCM reading that FIFO behaves like a real card.

Runs as its own process (`python -m appliance.feeder`): opening a PCM on a FIFO blocks, holding
the GIL, until the writer has opened it, so the writer cannot be a thread of the reader.
Before `t0` and after the timeline it writes line hiss; it ends when the reader goes away.

The file plugin returns a whole period even when the FIFO held less (the rest is stale data), so
the feeder writes whole periods only, each in one write: pipe writes up to PIPE_BUF are atomic,
and a reader asking for one period then always gets exactly one.
"""

import argparse
import os
import signal
import time

import numpy as np

HISS = 30


def feed(raw_path: str, fifo: str, rate: int, t0: float, period_frames: int, speed: float = 1.0) -> None:
    """Write `raw_path` (s16 mono) into `fifo` so that its first sample is due at monotonic `t0`,
    `speed` times faster than real time (benchmarks)."""
    timeline = np.fromfile(raw_path, dtype="<i2")
    hiss = np.random.default_rng(1).normal(0, HISS, rate).astype("<i2")
    period_s = period_frames / rate / speed
    with open(os.open(fifo, os.O_WRONLY), "wb", buffering=0) as out:   # never create a plain file
        written = time.monotonic()          # the audio up to this instant has been written
        while True:
            while time.monotonic() - written >= period_s:
                start = int(round((written - t0) * rate * speed))
                out.write(_slice(timeline, hiss, start, period_frames).tobytes())
                written += period_s
            time.sleep(max(0.0, written + period_s - time.monotonic()))


def _slice(timeline: np.ndarray, hiss: np.ndarray, start: int, frames: int) -> np.ndarray:
    """Samples [start, start+frames) of the timeline, hiss where it has none."""
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
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        feed(args.raw, args.fifo, args.rate, args.t0, args.period_frames, args.speed)
    except BrokenPipeError:
        os._exit(0)   # the recorder closed the capture device or died


if __name__ == "__main__":
    main()
