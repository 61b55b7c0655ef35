"""The store secret and the slots that keep it: one per web user, wrapped with a key derived from
the user's password (argon2id), and the recovery key, which is the secret itself, shown once.

Everything that reads a sealed store derives from the secret (`appliance.store.sealing.Opener`),
so the recovery key alone opens the store and every offloaded copy, even without the card.
"""

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

from appliance.errors import CallrecError
from appliance.store.sealing import Opener, public_path
from appliance.store.spool import fsync_dir

SLOTS_FILE = "web/keyslots.json"     # the web UI's, which adds and re-wraps slots
SECRET_BYTES = 32
CHECK_BYTES = 3                 # a typo in a recovery key is told apart from a wrong key
GROUP = 5
# The web's password hashing settings (web/accounts.py): a Pi derives a slot's key in about 0.2 s.
MEMORY_KIB, PASSES, LANES = 19 * 1024, 2, 1


class KeySlotError(CallrecError):
    """The store cannot be unlocked or its slots changed as asked."""


WRONG_PASSWORD = "the password does not unlock the store"


def _check(secret: bytes) -> bytes:
    return hashlib.sha256(b"callrec recovery " + secret).digest()[:CHECK_BYTES]


def recovery_text(secret: bytes) -> str:
    """The recovery key as printed: base32 in groups of five, with a check."""
    text = base64.b32encode(secret + _check(secret)).decode().rstrip("=")
    return "-".join(text[i:i + GROUP] for i in range(0, len(text), GROUP))


def parse_recovery(text: str) -> bytes:
    """The secret a recovery key stands for; KeySlotError names what is wrong with it."""
    compact = "".join(text.split()).replace("-", "").upper()
    try:
        raw = base64.b32decode(compact + "=" * (-len(compact) % 8))
    except ValueError:
        raise KeySlotError("the recovery key has a character that is not in it (A–Z, 2–7)") from None
    secret, check = raw[:SECRET_BYTES], raw[SECRET_BYTES:]
    if len(raw) != SECRET_BYTES + CHECK_BYTES or _check(secret) != check:
        raise KeySlotError("the recovery key is mistyped (its check does not match)")
    return secret


def _wrapping_key(password: str, salt: bytes, memory_kib: int, passes: int, lanes: int) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(password.encode(), salt, time_cost=passes, memory_cost=memory_kib,
                           parallelism=lanes, hash_len=32, type=Type.ID)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class KeySlots:
    """The store's key slots in a data folder (web/keyslots.json), and its public key (keys/store.pub)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / SLOTS_FILE

    def exists(self) -> bool:
        """True when this store has been given a secret (it seals)."""
        return public_path(self.data_dir).exists()

    def create(self) -> bytes:
        """Make the store secret and write its public key: from now on the store seals. Returns the
        secret (show it once as the recovery key). Refused if the store has one already."""
        if self.exists():
            raise KeySlotError(f"the store in {self.data_dir} is sealed already")
        secret = secrets.token_bytes(SECRET_BYTES)
        opener = Opener(secret)
        for folder in (self.path.parent, public_path(self.data_dir).parent):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write({"version": 1, "public": opener.public_hex(), "slots": {}})
        _write_durably(public_path(self.data_dir), (opener.public_hex() + "\n").encode(), 0o644)
        return secret

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            raise KeySlotError(f"{self.path} is missing: the store has no key slots") from None
        except ValueError as exc:
            raise KeySlotError(f"{self.path} is damaged ({exc})") from None

    def _write(self, slots: dict) -> None:
        _write_durably(self.path, json.dumps(slots, indent=1).encode(), 0o600)
        if os.geteuid() == 0:
            # Written by the technician's `sudo callrec …`: the file stays the web UI's, whose folder it is.
            folder = self.path.parent.stat()
            os.chown(self.path, folder.st_uid, folder.st_gid)

    def holders(self) -> list[str]:
        """Who has a slot (the names given to `add`)."""
        return sorted(self._read()["slots"]) if self.path.exists() else []

    def add(self, holder: str, password: str, secret: bytes) -> None:
        """Give `holder` a slot (or replace theirs) that `password` opens."""
        slots = self._read()
        if Opener(secret).public_hex() != slots["public"]:
            raise KeySlotError("this secret does not belong to the store")
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        key = _wrapping_key(password, salt, MEMORY_KIB, PASSES, LANES)
        wrapped = ChaCha20Poly1305(key).encrypt(nonce, secret, holder.encode())
        slots["slots"][holder] = {"kdf": "argon2id", "memory_kib": MEMORY_KIB, "passes": PASSES,
                                  "lanes": LANES, "salt": _b64(salt), "nonce": _b64(nonce),
                                  "wrapped": _b64(wrapped)}
        self._write(slots)

    def remove(self, holder: str) -> bool:
        """Remove `holder`'s slot; False if there was none."""
        slots = self._read()
        if slots["slots"].pop(holder, None) is None:
            return False
        self._write(slots)
        return True

    def unlock(self, holder: str, password: str) -> bytes:
        """The store secret from `holder`'s slot; KeySlotError if there is none or the password is wrong."""
        slot = self._read()["slots"].get(holder)
        if slot is None:
            raise KeySlotError(f"{holder} has no key slot for the store")
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        key = _wrapping_key(password, base64.b64decode(slot["salt"]), slot["memory_kib"],
                            slot["passes"], slot["lanes"])
        try:
            return ChaCha20Poly1305(key).decrypt(base64.b64decode(slot["nonce"]),
                                                 base64.b64decode(slot["wrapped"]), holder.encode())
        except InvalidTag:
            raise KeySlotError(WRONG_PASSWORD) from None

    def unlock_with_recovery(self, text: str) -> bytes:
        """The store secret from the recovery key, checked against the store's public key."""
        secret = parse_recovery(text)
        expected = public_path(self.data_dir).read_text().strip()
        if Opener(secret).public_hex() != expected:
            raise KeySlotError("this recovery key belongs to another store")
        return secret


def _write_durably(path: Path, data: bytes, mode: int) -> None:
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)
