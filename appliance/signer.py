"""The signer: the one process that holds the device's private key, so that the web UI, which faces
the LAN, signs without ever being able to read it (`callrec signer`, its own systemd unit).

It serves a UNIX stream socket in the runtime folder (`signer.sock`, next to the recorder's
`control.sock`), framed as the control channel is: one request per connection, one JSON object on
one line, one JSON line in answer, `{"ok": true, ...}` or `{"ok": false, "error": "..."}` (a bad
request changes nothing). Requests (`command`):

- `sign` with `data` (base64): `signature` (hex, Ed25519) and `public` (the public key, hex);
- `public`: `public`;
- `unlock` with `secret` (the store secret, base64): a sealed store's device key is opened;
- `status`: `sealed`, `locked` and `public`;
- `ledger`: the events the catalogue holds for the ledger are put on its chain, which only the
  recorder's user writes (`written`: how many); the web UI asks after each change it records.

In a plain store the key is read from its PEM file at start. In a sealed store it is on the card
only sealed to the store: signing waits (`locked`) until the web UI forwards the store secret at a
user's login. Where no signer runs (a plain store on a development machine, the tests), the same
answers come from a short-lived process that reads the key file, if the caller may read it. See
docs/signer.md.
"""

import base64
import binascii
import hashlib
import json
import logging
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
from pathlib import Path

from appliance.control import ControlError, SocketService, read_line, send
from appliance.errors import CallrecError
from appliance.keys import (KEYS_DIR_SHARED, DeviceKeyError, ensure_device_key, fingerprint, key_path,
                            load_private_key, open_sealed_key, public_hex_of, public_key_hex)
from appliance.service import Service
from appliance.store import ledgerkeeper
from appliance.store.catalogue import CATALOGUE_NAME, Catalogue
from appliance.store.sealing import Opener, SealError, is_sealed

log = logging.getLogger(__name__)

SOCKET_NAME = "signer.sock"
SOCKET_MODE = 0o660             # the web UI connects through its group
MAX_REQUEST_BYTES = 16 << 20    # base64 of the largest manifest an export makes (thousands of calls)
REQUEST_S = 30.0                # a client must send its request within this (a large manifest too)
ANSWER_S = 30.0                 # the signer answers within this
COMMANDS = ("sign", "public", "unlock", "status", "ledger")
LOCKED = "signing waits for a login"
LEDGER_EVERY_S = 60.0           # the ledger is written this often anyway (events a request missed)


class SignerError(CallrecError):
    """The device key cannot sign now: the signer refused (its reason) or does not answer."""


class SigningWaits(SignerError):
    """A sealed store's device key is not open yet: signing waits for a user's login."""

    def __init__(self):
        super().__init__(LOCKED)


class SignerUnavailable(SignerError):
    """No signer answers on the socket."""


class DeviceKey:
    """The device key as the signer holds it: open from the start in a plain store, from the
    first `unlock` on in a sealed one."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.sealed = is_sealed(self.data_dir)
        ensure_device_key(self.data_dir)
        self._lock = threading.Lock()
        self._key = None if self.sealed else load_private_key(self.data_dir)
        self.public = public_key_hex(self._key) if self._key is not None else public_hex_of(self.data_dir)

    @property
    def locked(self) -> bool:
        """True while the key cannot sign (a sealed store before the first login)."""
        return self._key is None

    def unlock(self, secret: bytes) -> None:
        """Open a sealed store's device key with the store secret; SignerError if it does not."""
        if not self.sealed:
            return
        try:
            key = open_sealed_key(self.data_dir, Opener(secret))
        except (SealError, ValueError):
            raise SignerError("the secret does not open the device key (not this store's)") from None
        with self._lock:
            self._key = key
            self.public = public_key_hex(key)

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of `data`; SigningWaits while locked."""
        with self._lock:
            key = self._key
        if key is None:
            raise SigningWaits()
        return key.sign(data)

    def follow_store(self) -> None:
        """A store sealed since the start (`callrec seal`): the key in the clear is sealed now and
        forgotten, and signing waits for a login."""
        if not self.sealed and is_sealed(self.data_dir):
            ensure_device_key(self.data_dir)
            with self._lock:
                self.sealed, self._key = True, None
            log.info("the store is sealed now: the device key is sealed too, and signing waits for a login")

    def answer(self, request) -> dict:
        """The answer to one request (a decoded JSON value): what it asks, or why not."""
        self.follow_store()
        try:
            command = _command(request)
            if command == "ledger":
                raise SignerError("no ledger is written here")
            if command == "sign":
                signature = self.sign(_base64(request, "data"))
                return {"ok": True, "signature": signature.hex(), "public": self.public}
            if command == "unlock":
                self.unlock(_base64(request, "secret"))
            return {"ok": True, "sealed": self.sealed, "locked": self.locked, "public": self.public}
        except SigningWaits as exc:
            return {"ok": False, "error": str(exc), "locked": True}
        except SignerError as exc:
            return {"ok": False, "error": str(exc)}


def _command(request) -> str:
    if not isinstance(request, dict):
        raise SignerError("the request must be a JSON object")
    if request.get("command") not in COMMANDS:
        raise SignerError(f"command: one of {', '.join(COMMANDS)}")
    return request["command"]


def _base64(request: dict, name: str) -> bytes:
    value = request.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise SignerError(f"{name}: base64 bytes") from None


def parse(line: bytes):
    """A request line as JSON; SignerError when it is not."""
    try:
        return json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise SignerError("the request is not one line of JSON") from None


class LedgerWriter(Service):
    """Writes the ledger of a data folder for those who may not (the web UI): on request, at its
    start and every LEDGER_EVERY_S."""

    def __init__(self, data_dir: Path):
        super().__init__("ledger")
        self.data_dir = Path(data_dir)
        self._catalogue: Catalogue | None = None
        self._lock = threading.Lock()

    def write(self) -> dict:
        """Put the waiting events on the chain: the answer to a `ledger` request."""
        try:
            with self._lock:
                if self._catalogue is None:
                    if not (self.data_dir / CATALOGUE_NAME).exists():
                        return {"ok": True, "written": 0}       # the recorder makes it, with its mode
                    self._catalogue = Catalogue(self.data_dir)
            return {"ok": True, "written": ledgerkeeper.drain(self._catalogue)}
        except (CallrecError, OSError, sqlite3.Error) as exc:      # the catalogue busy too: tried again
            return {"ok": False, "error": f"the ledger cannot be written: {exc}"}

    def serve(self) -> None:
        while True:
            answer = self.write()
            if not answer["ok"]:
                log.warning("%s", answer["error"])
            if self.wait(LEDGER_EVERY_S):
                return


class SignerService(SocketService):
    """Serves the signer's socket in `folder` for `key` and `ledger` (its group is the signer's:
    the web UI's user is in it)."""

    def __init__(self, folder: Path, key: DeviceKey, ledger: LedgerWriter | None = None):
        super().__init__("signer", Path(folder) / SOCKET_NAME, SOCKET_MODE)
        self.key = key
        self.ledger = ledger

    def handle(self, conn: socket.socket) -> None:
        """Answer one request."""
        with conn:
            conn.settimeout(REQUEST_S)
            try:
                request = parse(read_line(conn, MAX_REQUEST_BYTES))
                if isinstance(request, dict) and request.get("command") == "ledger" and self.ledger is not None:
                    answer = self.ledger.write()
                else:
                    answer = self.key.answer(request)
            except (SignerError, ControlError) as exc:
                request, answer = None, {"ok": False, "error": str(exc)}
            if answer.get("signature"):
                # What was signed, for whom: a trail in the journal if the web UI is ever abused.
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                data = base64.b64decode(request["data"])
                log.info("signed %d bytes (SHA-256 %s) for uid %d", len(data), hashlib.sha256(data).hexdigest(), uid)
            try:
                send(conn, answer)
            except OSError:
                pass            # the client went away: nothing to tell it

    def problem(self, stale_s: float) -> str | None:
        """Why the signer or its ledger writer is not well, or None."""
        return super().problem(stale_s) or (self.ledger.problem(stale_s) if self.ledger is not None else None)

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving, and the ledger writer."""
        super().stop(timeout)
        if self.ledger is not None:
            self.ledger.stop(timeout)


class DeviceSigner:
    """How the web UI, the offloader and the CLI sign with the device key: through the signer's
    socket in `folder`; where no signer runs and the store is plain, from the key file (which
    fails where the caller may not read it): in a short-lived process of their own, or with
    `apart=False` in this one (a command that ends soon anyway).

    `unlocker`, if given, returns the store secret it holds (or None): a signer that restarted
    since the login is given it again rather than keep signing waiting."""

    def __init__(self, folder: Path | None, data_dir: Path, apart: bool = True, unlocker=None):
        self.path = Path(folder) / SOCKET_NAME if folder is not None else None
        self.data_dir = Path(data_dir)
        self.apart = apart
        self.unlocker = unlocker
        self._public: str | None = None

    def sign(self, data: bytes) -> tuple[bytes, str]:
        """(signature, public key hex) of `data`; SigningWaits while a sealed key is locked,
        SignerError when it cannot be signed."""
        answer = self.ask({"command": "sign", "data": base64.b64encode(data).decode()})
        return bytes.fromhex(answer["signature"]), answer["public"]

    def public_hex(self) -> str:
        """The device's public key, hex."""
        if self._public is None:
            public = self.ask({"command": "public"})["public"]
            if public is None:
                raise SignerError("the device's public key is not known until a login opens the device key")
            self._public = public
        return self._public

    def fingerprint(self) -> str:
        """The device's fingerprint, to print and to check bundles against."""
        return fingerprint(self.public_hex())

    def unlock(self, secret: bytes) -> dict:
        """Give the signer the store secret (after a login), so a sealed key can sign."""
        return self.ask({"command": "unlock", "secret": base64.b64encode(secret).decode()})

    def status(self) -> dict:
        """`sealed`, `locked` and `public` as the signer sees them."""
        return self.ask({"command": "status"})

    def write_ledger(self) -> int:
        """Have the signer put the events waiting in the catalogue on the ledger's chain (which
        only it writes for the web UI); how many. SignerError when it cannot."""
        answer = self.over_socket({"command": "ledger"})
        if not answer.get("ok"):
            raise SignerError(f"the signer refused: {answer.get('error')}")
        return answer["written"]

    def ask(self, request: dict) -> dict:
        """One request's answer (ok); SigningWaits or SignerError otherwise."""
        try:
            return self._ask(request)
        except SigningWaits:
            secret = self.unlocker() if self.unlocker is not None else None
            if secret is None:
                raise
            self.unlock(secret)
            return self._ask(request)

    def _ask(self, request: dict) -> dict:
        try:
            answer = self.over_socket(request)
        except SignerUnavailable:
            if not self.apart:
                answer = self._here(request)
            elif is_sealed(self.data_dir):
                raise
            else:
                answer = self._apart(request)
        if not answer.get("ok"):
            if answer.get("locked"):
                raise SigningWaits()
            raise SignerError(f"the signer refused: {answer.get('error')}")
        return answer

    def over_socket(self, request: dict) -> dict:
        """The signer's answer to `request`, as it is; SignerUnavailable when none answers."""
        if self.path is None or not self.path.exists():
            raise SignerUnavailable(f"the signer is not running (no {self.path}): "
                                    "systemctl status callrec-signer says why")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(ANSWER_S)
        try:
            with conn:
                conn.connect(str(self.path))
                conn.sendall(json.dumps(request).encode() + b"\n")
                conn.shutdown(socket.SHUT_WR)
                line = b"".join(iter(lambda: conn.recv(1 << 16), b""))
            return json.loads(line)
        except (OSError, ValueError) as exc:
            raise SignerUnavailable(f"the signer does not answer on {self.path} ({exc}): "
                                    "systemctl status callrec-signer says why") from None

    def _here(self, request: dict) -> dict:
        """The answer from the key file in this process: a sealed key only with the secret the
        unlocker gives (`callrec export` with the recovery key)."""
        key = DeviceKey(self.data_dir)
        if key.sealed:
            secret = self.unlocker() if self.unlocker is not None else None
            if secret is None:
                raise SignerUnavailable(f"the signer is not running (no {self.path}): "
                                        "systemctl status callrec-signer says why")
            key.unlock(secret)
        return key.answer(request)

    def _apart(self, request: dict) -> dict:
        try:
            done = subprocess.run([sys.executable, "-m", "appliance.signer", str(self.data_dir)],
                                  input=json.dumps(request).encode(), capture_output=True,
                                  timeout=ANSWER_S, check=True)
            return json.loads(done.stdout)
        except subprocess.CalledProcessError as exc:
            raise SignerError(f"the device key cannot be used here: {_last_line(exc.stderr)}") from None
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise SignerError(f"the device key cannot be used here: {exc}") from None


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no reason given"


def start(data_dir: Path, folder: Path) -> SignerService:
    """The signer for `data_dir`, answering on a socket in `folder`, and the writer of its ledger
    (stop both with `stop()`). The keys folder is opened to the group: the web UI reads the
    store's public key and the audit key there (never the device key, whose file is 0600; the key
    slots are in the web UI's own folder)."""
    service = SignerService(folder, DeviceKey(data_dir), LedgerWriter(data_dir))
    os.chmod(key_path(data_dir).parent, KEYS_DIR_SHARED)
    service.ledger.start()
    service.start()
    key = service.key
    log.info("signing with device key %s (%s)", fingerprint(key.public) if key.public else "?",
             "sealed: signing waits for a login" if key.locked else "open")
    return service


if __name__ == "__main__":
    # python -m appliance.signer DATA_DIR < request.json: one answer, from the key file (no signer runs)
    if len(sys.argv) != 2:
        sys.exit("usage: python -m appliance.signer DATA_DIR < request.json")
    try:
        result = DeviceKey(Path(sys.argv[1])).answer(parse(sys.stdin.buffer.read().split(b"\n", 1)[0]))
    except SignerError as error:
        result = {"ok": False, "error": str(error)}
    except (DeviceKeyError, OSError) as error:
        sys.exit(str(error))
    sys.stdout.write(json.dumps(result))
