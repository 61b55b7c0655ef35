"""The device key: an Ed25519 key pair made on first start, whose private half only the appliance's
user can read. It signs exported bundles, so a recording can be shown to come from this box; only
the signer (`appliance.signer`) signs with it for the web UI.

In a sealed store the private key is never on the card in the clear: it is sealed to the store
(`keys/device-ed25519.sealed`), its public half beside it, and only a process given the store
secret opens it. The keyed hashes of the audit trail and of people's numbers have keys of their own
(`keys/audit.key`, `keys/subjects.key`), readable by the web UI's group, so that they never need
the device key. The folder is the recorder's alone (0700) until the signer opens it to the group
(0750) at its start: what must stay private there is in files of mode 0600.
"""

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

from appliance.errors import CallrecError

KEY_FILE = "keys/device-ed25519.pem"
SEALED_KEY_FILE = "keys/device-ed25519.sealed"
PUBLIC_KEY_FILE = "keys/device-ed25519.pub"     # hex; not a secret
SEALED_CONTEXT = b"device key"
KEYS_DIR_SHARED = 0o750          # keys/ once a signer runs: the web UI's group reaches what it may read
# The keys the recorder and the web UI both use. Each holds what `derived_key` gave before it had
# a file, so hashes made before still match.
SHARED_KEY_MODE = 0o640
AUDIT_KEY_FILE = "keys/audit.key"
SUBJECTS_KEY_FILE = "keys/subjects.key"


class DeviceKeyError(CallrecError):
    """The device key (or a key kept beside it) is missing, sealed or unreadable."""


def key_path(data_dir: Path) -> Path:
    """Where a data folder's device key lives."""
    return Path(data_dir) / KEY_FILE


def sealed_key_path(data_dir: Path) -> Path:
    """Where a sealed store keeps its device key, sealed."""
    return Path(data_dir) / SEALED_KEY_FILE


def ensure_device_key(data_dir: Path) -> Path:
    """Make the device key if there is none yet (mode 0600, in a 0700 folder); return its path.
    In a sealed store the key is made sealed and never written in the clear, and a key left in the
    clear from before the store was sealed is sealed, then removed."""
    from appliance.store.sealing import Sealer

    sealer = Sealer.load(data_dir)
    path = key_path(data_dir)
    if sealer is None:
        if not path.exists():
            _write_private(path, _new_pem())
        return path
    sealed = sealed_key_path(data_dir)
    if sealed.exists():
        return sealed
    if path.exists():
        _keep_shared_keys(data_dir)         # from the key in the clear, while it is still there
        pem = path.read_bytes()
    else:
        pem = _new_pem()
    _write_private(Path(data_dir) / PUBLIC_KEY_FILE, (public_key_hex(_load_pem(pem)) + "\n").encode(), 0o644)
    _write_private(sealed, sealer.seal(pem, SEALED_CONTEXT))
    path.unlink(missing_ok=True)
    return sealed


def _new_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _load_pem(pem: bytes):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem, password=None)


def _write_private(path: Path, data: bytes, mode: int = 0o600, folder_mode: int = 0o700) -> None:
    """Write a key file whole (temp, fsync, rename), with exactly `mode` whatever the umask."""
    from appliance.store.spool import fsync_dir

    path.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)


def derived_key(data_dir: Path, label: bytes) -> bytes:
    """A 32-byte secret for one use (`label`), derived from the device key in the clear (made if
    missing): what the shared keys were before they had files of their own."""
    path = key_path(data_dir)
    if not path.exists():
        ensure_device_key(data_dir)
    try:
        return hashlib.sha256(label + b"\0" + path.read_bytes()).digest()
    except FileNotFoundError:
        raise DeviceKeyError("the device key is sealed: nothing is derived from it") from None


def shared_key(data_dir: Path, name: str, label: bytes, create: bool = True) -> bytes:
    """The 32-byte key in `name` (a file of mode 0640). When it is missing it is made:
    the value `derived_key` gives where the device key is in the clear (so hashes made before
    still match), 32 random bytes in a sealed store. Without `create`, only an existing file or a
    key in the clear will do: DeviceKeyError otherwise."""
    path = Path(data_dir) / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    from appliance.store.sealing import is_sealed

    try:
        clear = key_path(data_dir).exists()
    except PermissionError:         # the web UI's user: the recorder makes the file at its start
        raise DeviceKeyError(f"{path} is missing, and only the recorder's user may make it: "
                             "start the recorder first") from None
    if not create and not clear:
        raise DeviceKeyError(f"{path} is missing (and the device key it was made from)")
    value = derived_key(data_dir, label) if clear or not is_sealed(data_dir) else secrets.token_bytes(32)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    _write_private(partial, value, SHARED_KEY_MODE)
    try:
        os.link(partial, path)          # two processes at once: the first one's key is everyone's
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)
    return path.read_bytes()


def _keep_shared_keys(data_dir: Path) -> None:
    """Write the shared keys' files from the key in the clear, before it goes."""
    from appliance.store.auditchain import KEY_LABEL as AUDIT_LABEL
    from appliance.store.subjects import KEY_LABEL as SUBJECTS_LABEL

    shared_key(data_dir, AUDIT_KEY_FILE, AUDIT_LABEL)
    shared_key(data_dir, SUBJECTS_KEY_FILE, SUBJECTS_LABEL)


def load_private_key(data_dir: Path):
    """The device's private key (made if missing). Only where the key is in the clear: in a
    sealed store, only the signer opens it (DeviceKeyError)."""
    path = ensure_device_key(data_dir)
    if path != key_path(data_dir):
        raise DeviceKeyError("the device key is sealed: only the signer opens it, after a login")
    return _load_pem(path.read_bytes())


def open_sealed_key(data_dir: Path, opener):
    """The sealed device key, opened with the store secret's `opener` (SealError if it is not
    this store's)."""
    return _load_pem(opener.open(sealed_key_path(data_dir).read_bytes(), SEALED_CONTEXT))


def public_hex_of(data_dir: Path) -> str | None:
    """The device's public key as hex, as kept beside a sealed key; None where there is none."""
    try:
        return (Path(data_dir) / PUBLIC_KEY_FILE).read_text().strip()
    except FileNotFoundError:
        return None


def public_key_hex(private_key) -> str:
    """The raw 32-byte public key, as hex."""
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def fingerprint(public_hex: str) -> str:
    """A short, readable fingerprint of a public key, to check by phone or on paper."""
    digest = hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:32]
    return ":".join(digest[i:i + 4] for i in range(0, len(digest), 4))


def certificate_fingerprint(pem: str) -> str:
    """A TLS certificate's SHA-256 fingerprint, as browsers show it (AB:CD:…)."""
    import ssl

    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest())


def ensure_device_key_apart(data_dir: Path) -> Path:
    """`ensure_device_key`, and the shared keys' files, in a short-lived process of its own, so
    that the long-running recorder does not keep the cryptography library (about 9 MB) in memory
    for a one-time job."""
    path = key_path(data_dir)
    made = [path.exists() or sealed_key_path(data_dir).exists(),
            (Path(data_dir) / AUDIT_KEY_FILE).exists(), (Path(data_dir) / SUBJECTS_KEY_FILE).exists()]
    if not all(made):
        subprocess.run([sys.executable, "-m", "appliance.keys", str(data_dir)], check=True)
    return path


if __name__ == "__main__":
    ensure_device_key(Path(sys.argv[1]))
    _keep_shared_keys(Path(sys.argv[1]))
