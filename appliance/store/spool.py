"""The spool: a call's raw audio as a WAV file, written in batches and synced at a steady cadence.

A spool file survives a crash: its header is written (and synced) first with zero sizes, the audio
is appended and fsynced every `flush_interval` seconds, so a `kill -9` or a power cut loses at most
that much plus what the kernel had not yet been asked to write. `repair_header` patches the sizes
from the file length on recovery. Nothing is written per audio period, which spares the SD card.
"""

import errno
import logging
import os
import struct
import threading
import time
from pathlib import Path

from appliance.store.sealing import RECORD_TAG, SealedStream, record_spans

log = logging.getLogger(__name__)

HEADER_BYTES = 44
SAMPLE_BYTES = 2  # signed 16-bit little-endian


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    """A canonical 44-byte PCM WAV header for 16-bit samples."""
    block = channels * SAMPLE_BYTES
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
            + b"data" + struct.pack("<I", data_bytes))


def read_header(path: Path) -> tuple[int, int]:
    """Return (rate, channels) of a spool file written by `SpoolWriter`."""
    with open(path, "rb") as f:
        return parse_header(f.read(HEADER_BYTES), path)


def parse_header(head: bytes, path: Path) -> tuple[int, int]:
    """(rate, channels) of a spool's WAV header; ValueError naming `path` if it is not one."""
    if len(head) < HEADER_BYTES or head[:4] != b"RIFF" or head[36:40] != b"data":
        raise ValueError(f"{path} is not a spool file (bad WAV header)")
    channels, rate = struct.unpack("<HI", head[22:28])
    return rate, channels


def sealed_format(path: Path, stream: SealedStream) -> tuple[int, int, int]:
    """(rate, channels, frames) of a sealed spool, read through the `stream` that wrote it (only
    its first record, the WAV header, is opened)."""
    with open(path, "rb") as f:
        _, spans = record_spans(f, path)
        if not spans:
            raise ValueError(f"{path} is cut before its format")
        offset, length = spans[0]
        f.seek(offset)
        rate, channels = parse_header(stream.open_record(0, f.read(length)), path)
    return rate, channels, sealed_frames(spans, channels)


def sealed_frames(spans: list[tuple[int, int]], channels: int) -> int:
    """The frames a sealed spool holds, from its records' lengths (see `record_spans`): what follows
    the WAV header's record is audio, each record's plaintext its length less the seal's tag. No
    key is needed: how long a call lasted is not sealed."""
    return sum(length - RECORD_TAG for _, length in spans[1:]) // (channels * SAMPLE_BYTES)


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a new, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_header(path: Path) -> int:
    """Patch the size fields of a spool file from its length (dropping a torn last frame);
    return the number of frames it holds."""
    rate, channels = read_header(path)
    block = channels * SAMPLE_BYTES
    with open(path, "r+b") as f:
        data_bytes = os.fstat(f.fileno()).st_size - HEADER_BYTES
        data_bytes -= data_bytes % block
        f.truncate(HEADER_BYTES + data_bytes)
        f.write(wav_header(rate, channels, data_bytes))
        f.flush()
        os.fsync(f.fileno())
    return data_bytes // block


def read_pcm(path: Path, chunk_frames: int = 8000, stream=None):
    """Yield the audio of a spool file as chunks of raw PCM bytes; of a sealed spool through the
    `stream` that wrote it (one chunk per flush)."""
    if stream is not None:
        records = stream.read(path)
        next(records, None)         # the WAV header
        yield from records
        return
    rate, channels = read_header(path)
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while chunk := f.read(chunk_frames * channels * SAMPLE_BYTES):
            yield chunk


class SpoolWriter:
    """Appends audio to a spool file from any thread; a writer thread of its own does the I/O."""

    def __init__(self, path: Path, rate: int, channels: int = 1, flush_interval: float = 1.0, on_full=None,
                 sealer=None):
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self.flush_interval = flush_interval
        self.on_full = on_full      # called when a write finds the disk full; True if it made room
        self.frames = 0
        self._pending: list[bytes] = []
        self._unwritten = b""               # encoded (sealed) already, not yet on the disk
        self.stream = sealer.new_stream() if sealer is not None else None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._wake = threading.Event()      # the first audio is written at once, not a beat later
        self._failing = False
        self.first_synced_at: float | None = None   # monotonic: the first audio was on the disk
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        head = wav_header(rate, channels, 0)
        if self.stream is not None:
            head = self.stream.header() + self.stream.record(head)
        os.write(self._fd, head)
        os.fsync(self._fd)
        fsync_dir(self.path.parent)
        self._thread = threading.Thread(target=self._run, name=f"spool-{self.path.stem}", daemon=True)
        self._thread.start()

    def append(self, pcm: bytes) -> None:
        """Queue audio for the next flush (cheap: called once per audio period)."""
        with self._lock:
            first = self.frames == 0
            self._pending.append(pcm)
            self.frames += len(pcm) // (self.channels * SAMPLE_BYTES)
        if first:
            self._wake.set()

    def _write_pending(self) -> None:
        with self._lock:
            data, self._pending = b"".join(self._pending), []
        if data and self.stream is not None:
            data = self.stream.record(data)         # one record per flush
        view = memoryview(self._unwritten + data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            if data or self._unwritten:
                os.fsync(self._fd)
                if self.first_synced_at is None:
                    self.first_synced_at = time.monotonic()
        except OSError:
            # Kept as encoded: a sealed record is numbered, it must not be sealed again.
            self._unwritten = bytes(view)
            raise
        self._unwritten = b""

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                try:
                    self._write_pending()
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or self.on_full is None or not self.on_full():
                        raise
                    self._write_pending()       # into the room the reserve gave back
            except OSError as exc:
                # Keep the audio queued and try again at the next beat: a full or failing card
                # must not stop the call from being captured in RAM meanwhile.
                if not self._failing:
                    log.error("cannot write spool file %s (%s): its audio waits in memory", self.path, exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("spool file %s written again", self.path)
                self._failing = False

    def close(self) -> int:
        """Write what is left, patch the header (a sealed spool has none in the clear) and close;
        return the number of frames."""
        self._closing.set()
        self._wake.set()
        self._thread.join()
        self._write_pending()
        os.close(self._fd)
        return self.frames if self.stream is not None else repair_header(self.path)
