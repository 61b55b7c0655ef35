"""A recording's loudness over time, for the web UI's waveform: the loudest sample of each of
COLUMNS equal slices of the call, 0..255 of full scale, one byte each. Folded from the spool's PCM
while the call is encoded, and kept in the call's row, so drawing the waveform decodes nothing
(and goes with the row when the call is erased)."""

from collections.abc import Iterable, Iterator

import numpy as np

COLUMNS = 600


class PeakFolder:
    """Folds a recording's s16 PCM, chunk by chunk, into its column peaks."""

    def __init__(self, frames: int, channels: int = 1, columns: int = COLUMNS):
        self.frames, self.channels, self.columns = max(1, frames), channels, columns
        self.peaks = np.zeros(columns, dtype=np.int32)
        self.position = 0

    def add(self, chunk: bytes) -> None:
        """Fold the next chunk of interleaved PCM (a stereo frame counts its louder side)."""
        samples = np.abs(np.frombuffer(chunk, dtype="<i2").astype(np.int32))
        if self.channels > 1:
            samples = samples[:len(samples) - len(samples) % self.channels].reshape(-1, self.channels).max(axis=1)
        if not len(samples):
            return
        first = min(self.columns - 1, self.position * self.columns // self.frames)
        last = min(self.columns - 1, (self.position + len(samples) - 1) * self.columns // self.frames)
        # Where each later column starts within this chunk (ceiling division).
        starts = [-(-column * self.frames // self.columns) - self.position for column in range(first + 1, last + 1)]
        loudest = np.maximum.reduceat(samples, [0, *starts])
        self.peaks[first:last + 1] = np.maximum(self.peaks[first:last + 1], loudest)
        self.position += len(samples)

    def passing(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The chunks, unchanged, folded on the way through."""
        for chunk in chunks:
            self.add(chunk)
            yield chunk

    def result(self) -> bytes:
        """The peaks, one byte per column (255: full scale)."""
        return bytes(np.minimum(255, (self.peaks * 255 + 16383) // 32767).astype(np.uint8))


def peaks_from_levels(levels: Iterable[float]) -> bytes:
    """Peaks given as fractions of full scale (0..1), in the stored form."""
    return bytes(min(255, max(0, round(level * 255))) for level in levels)
