"""A waveform picture of a recording: its peaks over time as an SVG the player draws its cursor on.

The peaks are folded when the call is archived and kept with it (`appliance.store.peaks`), so a
picture costs no decoding. A call archived before that is decoded once, frame by frame (memory
stays flat however long the call), one at a time (a Pi's core is the recorder's first), and its
peaks are kept from then on.
"""

import array
import threading
from pathlib import Path
from typing import BinaryIO

import av

from appliance.errors import AudioFileError
from appliance.store.peaks import COLUMNS

HEIGHT = 100
RATE = 8000         # plenty for a picture, and cheap to decode

_one_at_a_time = threading.Lock()


def decode_peaks(path: Path | BinaryIO, duration_s: float, columns: int = COLUMNS) -> list[float]:
    """The loudest sample of each of `columns` equal slices of a recording `duration_s` long (a
    path, or its plain bytes as a file), 0..1 of full scale (a stereo recording is mixed to mono:
    the picture is of the whole call)."""
    total = max(1, int(duration_s * RATE))
    result = [0.0] * columns
    position = 0
    with _one_at_a_time:
        try:
            with av.open(path if hasattr(path, "read") else str(path)) as container:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                for frame in container.decode(audio=0):
                    for chunk in resampler.resample(frame):
                        samples = array.array("h", bytes(chunk.planes[0])[:chunk.samples * 2])
                        position = _add(result, samples, position, total, columns)
        except (av.FFmpegError, OSError) as exc:
            raise AudioFileError(f"cannot decode {path}: {exc}") from None
    return result


def _add(result: list[float], samples: array.array, position: int, total: int, columns: int) -> int:
    """Fold `samples` (starting at sample `position` of the recording) into the columns' peaks."""
    start = 0
    while start < len(samples):
        column = min(columns - 1, (position + start) * columns // total)
        next_column_starts = -(-(column + 1) * total // columns) - position     # ceiling division
        end = len(samples) if column == columns - 1 else max(start + 1, min(len(samples), next_column_starts))
        part = samples[start:end]
        result[column] = max(result[column], max(max(part), -min(part)) / 32768)
        start = end
    return position + len(samples)


def waveform_svg(levels: bytes) -> str:
    """An SVG of a recording's stored peaks, one vertical bar per column."""
    middle = HEIGHT / 2
    bars = " ".join(f"M{x} {middle - p / 255 * middle:.1f}V{middle + p / 255 * middle:.1f}"
                    for x, p in enumerate(levels) if p > 0)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {len(levels)} {HEIGHT}" '
            f'preserveAspectRatio="none"><path d="{bars}" stroke="#2b6cb0" stroke-width="1" fill="none"/>'
            f'<line x1="0" y1="{middle}" x2="{len(levels)}" y2="{middle}" stroke="#cbd5e0" stroke-width="0.5"/></svg>')
