"""Sealing at rest: what the appliance writes can be read only with the store's private key.

The scheme is HPKE (RFC 9180) in base mode, X25519 / HKDF-SHA256 / ChaCha20-Poly1305, from the
`cryptography` library: the recorder holds only the store's public key, so it writes without the
ability to read. The private key is derived from the store secret (see `appliance.store.keyslots`),
which exists in RAM only after a login or with the recovery key.

Two forms:
- a *field* (a number, a name, a note): ``sealed:`` and the base64 of one HPKE message, bound to the
  field's name, so a value cannot be passed off as another field;
- a *stream* (a spool or an archive file): a magic line, the stream's own random key sealed with
  HPKE, then records of a 4-byte length and ChaCha20-Poly1305 under that key, each bound to its
  index so records cannot be reordered. The writer keeps the stream key in RAM for as long as it
  writes, so the recorder can read back its own call to encode it, and nothing older. Each record
  stands alone: a stream cut by a crash loses only its torn last record.
"""

import base64
import hashlib
import hmac
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from appliance.errors import CallrecError

PUBLIC_FILE = "keys/store.pub"
FIELD_PREFIX = "sealed:"
STREAM_MAGIC = b"CALLREC-SEALED-1\n"
RECORD_LENGTH = struct.Struct(">I")
MAX_RECORD = 16 << 20           # larger than any flush or archive chunk: a bigger length is damage
ARCHIVE_CHUNK = 64 * 1024       # plaintext bytes per record of a sealed archive file


class SealError(CallrecError):
    """Sealed data cannot be read: the store is locked, the key is wrong or the data is damaged."""


class StoreLocked(SealError):
    """Sealed data is read without the store's key: no one has logged in since start-up."""

    def __init__(self, message: str = "the store is locked: a user's login unlocks it"):
        super().__init__(message)


def _suite():
    from cryptography.hazmat.primitives import hpke

    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def _derive(secret: bytes, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=None, info=b"callrec " + label).derive(secret)


def public_path(data_dir: Path) -> Path:
    """Where a data folder's store public key is kept (hex; not a secret)."""
    return Path(data_dir) / PUBLIC_FILE


def is_sealed(data_dir: Path) -> bool:
    """True when the store in this data folder seals what is written to it."""
    return public_path(data_dir).exists()


def is_sealed_stream(head: bytes) -> bool:
    """True when a file starting with `head` is a sealed record stream."""
    return head.startswith(STREAM_MAGIC)


def is_sealed_field(value) -> bool:
    """True when a catalogue value is a sealed field."""
    return isinstance(value, str) and value.startswith(FIELD_PREFIX)


class Sealer:
    """The write side: seals with the store's public key and can read nothing back."""

    def __init__(self, public_key):
        self.public_key = public_key
        self._suite = _suite()

    @classmethod
    def load(cls, data_dir: Path) -> "Sealer | None":
        """The sealer of a data folder's store, or None when the store is not sealed."""
        path = public_path(data_dir)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        try:
            return cls(X25519PublicKey.from_public_bytes(bytes.fromhex(text)))
        except ValueError as exc:
            raise SealError(f"{path}: not a store public key ({exc})") from None

    def seal(self, data: bytes, context: bytes) -> bytes:
        """One HPKE message holding `data`, bound to `context`."""
        return self._suite.encrypt(data, self.public_key, info=b"callrec " + context)

    def seal_field(self, value: str | None, field: str) -> str | None:
        """A text field as stored in a sealed catalogue (None stays None)."""
        if value is None or is_sealed_field(value):
            return value
        sealed = self.seal(value.encode(), b"field " + field.encode())
        return FIELD_PREFIX + base64.b64encode(sealed).decode()

    def new_stream(self) -> "SealedStream":
        """A stream with a key of its own, sealed to the store."""
        return SealedStream(self)


class SealedStream:
    """One sealed stream as its writer sees it: its header, then its records, numbered in order.
    The writer can read the stream back while it holds this object (the key is in RAM only)."""

    def __init__(self, sealer: Sealer, key: bytes | None = None):
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        key = key if key is not None else ChaCha20Poly1305.generate_key()
        self._aead = ChaCha20Poly1305(key)
        self._sealed_key = sealer.seal(key, b"stream key") if sealer is not None else b""
        self.index = 0

    def header(self) -> bytes:
        """What a sealed file starts with: the magic line and the stream key, sealed."""
        return STREAM_MAGIC + RECORD_LENGTH.pack(len(self._sealed_key)) + self._sealed_key

    def record(self, data: bytes) -> bytes:
        """The next record, length included."""
        sealed = self._aead.encrypt(_nonce(self.index), data, b"callrec record %d" % self.index)
        self.index += 1
        return RECORD_LENGTH.pack(len(sealed)) + sealed

    def open_record(self, index: int, sealed: bytes) -> bytes:
        """The plaintext of record `index`; SealError if it is damaged or out of place."""
        try:
            return self._aead.decrypt(_nonce(index), sealed, b"callrec record %d" % index)
        except Exception as exc:        # InvalidTag
            raise SealError(f"sealed record {index} cannot be opened ({type(exc).__name__})") from None

    def records(self, stream: BinaryIO) -> Iterator[bytes]:
        """The plaintext of each complete record of `stream` (positioned after the header); a torn
        last record, as a crash leaves it, ends it."""
        for index, sealed in enumerate(_frames(stream)):
            yield self.open_record(index, sealed)

    def read(self, path: Path) -> Iterator[bytes]:
        """The plaintext records of a file this stream wrote."""
        with open(path, "rb") as f:
            _skip_header(f, path)
            yield from self.records(f)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _frames(stream: BinaryIO) -> Iterator[bytes]:
    """The complete length-prefixed frames of a stream; a torn last frame ends it."""
    while True:
        head = stream.read(RECORD_LENGTH.size)
        if len(head) < RECORD_LENGTH.size:
            return
        (length,) = RECORD_LENGTH.unpack(head)
        if length > MAX_RECORD:
            raise SealError(f"sealed stream damaged (a record of {length} bytes)")
        data = stream.read(length)
        if len(data) < length:
            return
        yield data


def _skip_header(f: BinaryIO, path) -> bytes:
    """Read a sealed file's header; return its sealed stream key."""
    if not is_sealed_stream(f.read(len(STREAM_MAGIC))):
        raise SealError(f"{path} is not a sealed file")
    sealed_key = next(_frames(f), None)
    if sealed_key is None:
        raise SealError(f"{path} is cut before its key")
    return sealed_key


class Opener:
    """The read side, from the store secret: opens fields and streams, and makes number tags."""

    def __init__(self, secret: bytes):
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self.private_key = X25519PrivateKey.from_private_bytes(_derive(secret, b"store key"))
        self.sealer = Sealer(self.private_key.public_key())
        self._index_key = _derive(secret, b"number index")
        self._suite = _suite()

    def public_hex(self) -> str:
        """The store public key this secret belongs to, as hex."""
        from cryptography.hazmat.primitives import serialization

        return self.sealer.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()

    def derived_key(self, label: bytes) -> bytes:
        """A 32-byte key for one use, known only to who can open the store."""
        return hmac.new(self._index_key, b"key " + label, hashlib.sha256).digest()

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """The data of one HPKE message sealed with `context`; SealError if it is not ours or damaged."""
        try:
            return self._suite.decrypt(sealed, self.private_key, info=b"callrec " + context)
        except Exception as exc:        # the library raises InvalidTag or ValueError
            raise SealError(f"sealed data cannot be opened ({type(exc).__name__})") from None

    def open_field(self, value, field: str):
        """A catalogue value in the clear: a sealed field is opened, anything else is returned as is
        (a store sealed after it was started holds both until `callrec seal` has run)."""
        if not is_sealed_field(value):
            return value
        try:
            sealed = base64.b64decode(value[len(FIELD_PREFIX):], validate=True)
        except ValueError:
            raise SealError(f"sealed {field} is damaged (not base64)") from None
        return self.open(sealed, b"field " + field.encode()).decode()

    def number_tag(self, number: str) -> str:
        """The keyed tag of a number in E.164 form: how a sealed catalogue finds calls by number
        without holding the number in the clear (without the store secret, tags can't be guessed)."""
        return hmac.new(self._index_key, number.encode(), hashlib.sha256).hexdigest()[:32]

    def read_stream(self, path: Path) -> Iterator[bytes]:
        """The plaintext records of a sealed file."""
        with open(path, "rb") as f:
            key = self.open(_skip_header(f, path), b"stream key")
            yield from SealedStream(None, key).records(f)


def complete_records(path: Path) -> tuple[int, int]:
    """(records, bytes) of the complete records at the start of a sealed file, read without a key:
    where a torn last record begins, so recovery can cut it off."""
    with open(path, "rb") as f:
        _skip_header(f, path)
        end, count = f.tell(), 0
        for _ in _frames(f):
            end, count = f.tell(), count + 1
    return count, end


def seal_file(sealer: Sealer, source: BinaryIO, target: BinaryIO, chunk: int = ARCHIVE_CHUNK) -> None:
    """Write `source` to `target` as a sealed stream."""
    stream = sealer.new_stream()
    target.write(stream.header())
    while data := source.read(chunk):
        target.write(stream.record(data))


RECORD_TAG = 16                 # bytes a record's seal adds to its plaintext (Poly1305)


def record_spans(f: BinaryIO, path) -> tuple[bytes, list[tuple[int, int]]]:
    """A sealed file's sealed stream key and the (offset, length) of each of its complete sealed
    records, found without a key and without opening a record: to read a stream from any point."""
    f.seek(0)
    sealed_key = _skip_header(f, path)
    end = os.fstat(f.fileno()).st_size
    spans, at = [], f.tell()
    while at + RECORD_LENGTH.size <= end:
        f.seek(at)
        (length,) = RECORD_LENGTH.unpack(f.read(RECORD_LENGTH.size))
        if length > MAX_RECORD:
            raise SealError(f"sealed stream damaged (a record of {length} bytes)")
        if at + RECORD_LENGTH.size + length > end:
            break               # a torn last record
        spans.append((at + RECORD_LENGTH.size, length))
        at += RECORD_LENGTH.size + length
    return sealed_key, spans
