"""A recording file's plain bytes, whether it is sealed or not: what every reader of the archive
(the player, downloads, the waveform, export bundles) opens, and the writer that seals an archive
file as the encoder writes it, so no plain copy ever reaches the disk.

A sealed file is read from any point: its records are found without a key (`record_spans`), and
only those a read touches are opened, so a player's Range requests cost what they ask for. A sealed
spool kept as the archive (after a crash, or a disk too full to encode) holds a WAV header whose
sizes were not known yet; its reader gives the header the sizes of the audio that is there.
"""

import bisect
import io
import os
from pathlib import Path
from typing import BinaryIO

from appliance.store.sealing import (ARCHIVE_CHUNK, RECORD_LENGTH, RECORD_TAG, STREAM_MAGIC, Opener, SealedStream,
                                     Sealer, StoreLocked, is_sealed_stream, record_spans)
from appliance.store.spool import HEADER_BYTES, SAMPLE_BYTES, parse_header, wav_header


def is_sealed_file(path: Path) -> bool:
    """True when the file at `path` is sealed."""
    with open(path, "rb") as f:
        return is_sealed_stream(f.read(len(STREAM_MAGIC)))


def open_recording(path: Path, opener: Opener | None) -> BinaryIO:
    """A recording's plain bytes as a seekable binary file: the file itself when it is not sealed;
    a sealed one through `opener` (StoreLocked without one; SealError if it is damaged)."""
    if not is_sealed_file(path):
        return open(path, "rb")
    if opener is None:
        raise StoreLocked(f"{path} is sealed: the store's key is needed to read it")
    return io.BufferedReader(PlainReader(path, opener), ARCHIVE_CHUNK)


def plain_size(recording: BinaryIO) -> int:
    """The number of plain bytes of a file `open_recording` gave."""
    if isinstance(recording.raw, PlainReader):
        return recording.raw.size
    return os.fstat(recording.fileno()).st_size


def wav_seconds(recording: BinaryIO) -> float:
    """The length of a recording in the spool's WAV form, from its header and size (0.0 for any
    other form): for a sealed spool archived after a crash, whose row could not know it."""
    head = recording.read(HEADER_BYTES)
    recording.seek(0)
    try:
        rate, channels = parse_header(head, "the recording")
    except ValueError:
        return 0.0
    return (plain_size(recording) - HEADER_BYTES) / (rate * channels * SAMPLE_BYTES)


class PlainReader(io.RawIOBase):
    """A sealed file's plaintext, seekable, opening one record at a time."""

    def __init__(self, path: Path, opener: Opener):
        super().__init__()
        self._file = open(path, "rb")
        try:
            sealed_key, self._spans = record_spans(self._file, path)
            self._stream = SealedStream(None, opener.open(sealed_key, b"stream key"))
        except BaseException:
            self._file.close()
            raise
        self._starts, total = [], 0
        for _, length in self._spans:
            self._starts.append(total)
            total += length - RECORD_TAG
        self.size = total
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        self._head = None               # first, so that `_spool_header` reads the record as it is
        self._head = self._spool_header(path) if self._spans else None

    def _spool_header(self, path: Path) -> bytes | None:
        """The WAV header of a sealed spool (its first record, written before any size was known),
        given the sizes of the whole frames that follow; None for any other file."""
        head = self._record(0)
        if len(head) != HEADER_BYTES or head[40:44] != bytes(4):
            return None
        try:
            rate, channels = parse_header(head, path)
        except ValueError:
            return None
        data = self.size - HEADER_BYTES
        data -= data % (channels * SAMPLE_BYTES)
        self.size = HEADER_BYTES + data
        return wav_header(rate, channels, data)

    def _record(self, index: int) -> bytes:
        if index == 0 and self._head is not None:
            return self._head
        if self._cached is None or self._cached[0] != index:
            offset, length = self._spans[index]
            self._file.seek(offset)
            self._cached = (index, self._stream.open_record(index, self._file.read(length)))
        return self._cached[1]

    def readable(self) -> bool:
        """Always: the plaintext is read."""
        return True

    def seekable(self) -> bool:
        """Always: a player seeks anywhere."""
        return True

    def tell(self) -> int:
        """The position in the plaintext."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move in the plaintext (no record is opened until it is read)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        """Read from the record the position is in (at most to its end)."""
        if self._pos >= self.size:
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        data = self._record(index)
        at = self._pos - self._starts[index]
        part = data[at:at + min(len(buffer), self.size - self._pos)]
        buffer[:len(part)] = part
        self._pos += len(part)
        return len(part)

    def close(self) -> None:
        """Close the sealed file."""
        self._file.close()
        super().close()


class SealingWriter:
    """A file object an encoder writes an archive file through: its bytes reach `target` sealed,
    in records of ARCHIVE_CHUNK plain bytes (as `seal_file` makes them). The first chunk is kept in
    RAM until `finish`, so a muxer may go back into it to write what it knows only at the end (a
    FLAC or WAV header's sizes); any other seek backwards is refused."""

    def __init__(self, sealer: Sealer, target: BinaryIO):
        self._stream = sealer.new_stream()
        self._target = target
        target.write(self._stream.header())
        self._first_at = target.tell()
        self._head = bytearray()        # the first chunk, in the clear, in RAM only
        self._reserved = False          # the first record's place is kept in the file
        self._sealed = 0                # records after the first, on their way to the disk
        self._tail = bytearray()        # plain bytes after them, not yet sealed
        self._pos = 0

    def _end(self) -> int:
        return len(self._head) + self._sealed * ARCHIVE_CHUNK + len(self._tail)

    def writable(self) -> bool:
        """Always: the encoder writes."""
        return True

    def seekable(self) -> bool:
        """Yes, within the first chunk and to the end (see `seek`)."""
        return True

    def tell(self) -> int:
        """The position in the plain file being written."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Go back into the first chunk, or to the end; anywhere else is refused."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._end()}[whence]
        position = base + offset
        if position != self._end() and not 0 <= position < len(self._head):
            raise io.UnsupportedOperation("a sealing writer goes back only into its first chunk")
        self._pos = position
        return position

    def write(self, data) -> int:
        """Append `data`, or rewrite part of the first chunk after a seek back into it."""
        data = bytes(data)
        if self._pos < self._end():
            if self._pos + len(data) > len(self._head):
                raise io.UnsupportedOperation("a sealing writer rewrites only within its first chunk")
            self._head[self._pos:self._pos + len(data)] = data
            self._pos += len(data)
            return len(data)
        room = ARCHIVE_CHUNK - len(self._head)
        self._head += data[:room]
        rest = data[room:]
        if rest and not self._reserved:
            self._target.write(bytes(RECORD_LENGTH.size + ARCHIVE_CHUNK + RECORD_TAG))
            self._stream.index = 1
            self._reserved = True
        self._tail += rest
        while len(self._tail) >= ARCHIVE_CHUNK:
            self._target.write(self._stream.record(bytes(self._tail[:ARCHIVE_CHUNK])))
            del self._tail[:ARCHIVE_CHUNK]
            self._sealed += 1
        self._pos = self._end()
        return len(data)

    def finish(self) -> None:
        """Seal what is left: the last chunk, and the first one in the place kept for it."""
        if not self._reserved:
            self._target.write(self._stream.record(bytes(self._head)))
            return
        if self._tail:
            self._target.write(self._stream.record(bytes(self._tail)))
        end = self._target.tell()
        self._target.seek(self._first_at)
        self._stream.index = 0          # a record is sealed under its index
        self._target.write(self._stream.record(bytes(self._head)))
        self._target.seek(end)
