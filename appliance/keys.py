"""The device key: an Ed25519 key pair made on first start, whose private half only the appliance's
user can read. It signs exported bundles, so a recording can be shown to come from this box."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

KEY_FILE = "keys/device-ed25519.pem"


def key_path(data_dir: Path) -> Path:
    """Where a data folder's device key lives."""
    return Path(data_dir) / KEY_FILE


def ensure_device_key(data_dir: Path) -> Path:
    """Make the device key if there is none yet (mode 0600, in a 0700 folder); return its path."""
    path = key_path(data_dir)
    if path.exists():
        return path
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    partial = path.with_suffix(".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path


def derived_key(data_dir: Path, label: bytes) -> bytes:
    """A 32-byte secret for one use (`label`), derived from the device key: only whoever holds
    the device's data folder can compute the keyed hashes made with it."""
    return hashlib.sha256(label + b"\0" + ensure_device_key(data_dir).read_bytes()).digest()


def load_private_key(data_dir: Path):
    """The device's private key (made if missing)."""
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(ensure_device_key(data_dir).read_bytes(), password=None)


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
    """`ensure_device_key` in a short-lived process of its own, so that the long-running recorder
    does not keep the cryptography library (about 9 MB) in memory for a one-time job."""
    path = key_path(data_dir)
    if not path.exists():
        subprocess.run([sys.executable, "-m", "appliance.keys", str(data_dir)], check=True)
    return path


if __name__ == "__main__":
    ensure_device_key(Path(sys.argv[1]))
