"""A waveform picture of a recording: its peaks over time as an SVG the player draws its cursor on.

Made on request and not kept: a picture of a call is derived from personal data, and a cache
would be one more place an erasure had to reach.
"""

import array
from pathlib import Path

from appliance.codec import decode_to_pcm

COLUMNS = 600
HEIGHT = 100
RATE = 8000         # plenty for a picture, and cheap to decode


def peaks(path: Path, columns: int = COLUMNS) -> list[float]:
    """The loudest sample of each of `columns` equal slices of the recording, 0..1 of full scale
    (a stereo recording is mixed to mono by the decoder: the picture is of the whole call)."""
    samples = array.array("h", decode_to_pcm(path, RATE))
    if not samples:
        return [0.0] * columns
    step = max(1, len(samples) // columns)
    result = []
    for start in range(0, min(len(samples), step * columns), step):
        chunk = samples[start:start + step]
        result.append(max(max(chunk), -min(chunk)) / 32768)
    return result + [0.0] * (columns - len(result))


def waveform_svg(path: Path) -> str:
    """An SVG of the recording's peaks, one vertical bar per column."""
    middle = HEIGHT / 2
    bars = " ".join(f"M{x} {middle - p * middle:.1f}V{middle + p * middle:.1f}"
                    for x, p in enumerate(peaks(path)) if p > 0.002)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {COLUMNS} {HEIGHT}" '
            f'preserveAspectRatio="none"><path d="{bars}" stroke="#2b6cb0" stroke-width="1" fill="none"/>'
            f'<line x1="0" y1="{middle}" x2="{COLUMNS}" y2="{middle}" stroke="#cbd5e0" stroke-width="0.5"/></svg>')
