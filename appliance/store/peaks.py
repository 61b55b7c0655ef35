"""A recording's loudness over time, for the web UI's waveform: the loudest sample of each of
COLUMNS equal slices of the call, 0..255 of full scale, one byte each. Folded from the spool's PCM
while the call is encoded, and kept in the call's row, so drawing the waveform decodes nothing
(and goes with the row when the call is erased)."""

from collections.abc import Iterable, Iterator

from appliance.loudest import loudest

COLUMNS = 600
SAMPLE_BYTES = 2


class PeakFolder:
    """Folds a recording's s16 PCM, chunk by chunk, into its column peaks."""

    def __init__(self, frames: int, channels: int = 1, columns: int = COLUMNS):
        self.frames, self.channels, self.columns = max(1, frames), channels, columns
        self.peaks = [0] * columns
        self.position = 0

    def add(self, chunk: bytes) -> None:
        """Fold the next chunk of interleaved PCM (a stereo frame counts its louder side)."""
        frame_bytes = SAMPLE_BYTES * self.channels
        frames = len(chunk) // frame_bytes
        at = 0
        while at < frames:
            column = min(self.columns - 1, (self.position + at) * self.columns // self.frames)
            end = frames
            if column < self.columns - 1:       # the next column's first frame (ceiling division)
                end = min(frames, -(-(column + 1) * self.frames // self.columns) - self.position)
            self.peaks[column] = max(self.peaks[column], loudest(chunk[at * frame_bytes:end * frame_bytes]))
            at = end
        self.position += frames

    def passing(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The chunks, unchanged, folded on the way through."""
        for chunk in chunks:
            self.add(chunk)
            yield chunk

    def result(self) -> bytes:
        """The peaks, one byte per column (255: full scale)."""
        return bytes(min(255, (peak * 255 + 16383) // 32767) for peak in self.peaks)


def peaks_from_levels(levels: Iterable[float]) -> bytes:
    """Peaks given as fractions of full scale (0..1), in the stored form."""
    return bytes(min(255, max(0, round(level * 255))) for level in levels)
