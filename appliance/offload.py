"""Offload: each finished recording is copied off the box too, with a signed manifest, to a NAS by
rsync over SSH or to an S3-compatible bucket, from a thread of its own.

The catalogue is the queue: a recording is waiting while its call has a file and no
`offloaded_at`. So nothing is lost when the target is down or the recorder restarts, and at
start-up the offloader catches up with whatever is waiting. The recorder only wakes the thread
when a call is finished; it never waits for it. While the target fails, the thread retries after
`retry_first_s`, doubling up to `retry_max_s`; recording goes on meanwhile. Each copy is marked in
the catalogue (`offloaded_at`, `offload_target`) and in the ledger (`offloaded`) in one
transaction, after the target has acknowledged both files.

On the target, a recording keeps its archive path without the `archive/` folder
(`2026/11/23/00000042-t1.opus`), and its manifest is next to it (`….opus.json`): the call's
public fields, the recording's SHA-256, the call's ledger entries and the ledger head at the time
(which anchors the chain off the box), the device's public key and fingerprint, and the device
key's Ed25519 signature over the rest. The signer signs it (`appliance.signer`); where none runs,
a short-lived process does, as the device key is made, so that the recorder never keeps the
cryptography library loaded. In a sealed store, signing waits for a user's login: until then
copies wait too (retried with the back-off), and none is lost.
"""

import hashlib
import json
import logging
import shlex
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath

from appliance.store.recording import is_sealed_file
from appliance.store.catalogue import Catalogue, public_fields
from appliance.clock import iso_utc
from appliance.config import OffloadConfig
from appliance.errors import CallrecError
from appliance.keys import fingerprint
from appliance.signer import DeviceSigner, SignerError
from appliance.service import Backoff, Service
from appliance.s3 import Bucket, S3Error

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "callrec-offload-1"
STAGING_DIR = "offload"         # in the data folder: manifests on their way to an rsync target
BATCH = 50
POLL_S = 60.0           # how often an idle offloader looks for copies to delete
COPY_TIMEOUTS = 10      # a copy may last this many times the target's timeout_s
OFFLOAD_FIELDS = ("offloaded_at", "offload_target")
CONTENT_TYPES = {".opus": "audio/ogg", ".flac": "audio/flac", ".wav": "audio/wav"}
PROBE_NAME = ".callrec-doctor-probe"    # the test file `probe` copies to the target and deletes
PROBE_BODY = b"A test file of `callrec doctor`, deleted as soon as it was copied.\n"


class OffloadError(CallrecError, OSError):
    """The offload target could not take a recording (down, unreachable, refusing)."""


class ProbeLeftOver(OffloadError):
    """The probe's test file reached the target, but the target would not let it be deleted."""


def remote_path(row: dict) -> PurePosixPath:
    """Where a call's recording goes on the target: its archive path without `archive/`."""
    return PurePosixPath(*PurePosixPath(row["file"]).parts[1:])


# -- targets --------------------------------------------------------------------------------------

class RsyncTarget:
    """A folder on a NAS or server, reached by rsync over SSH with a key of its own; the server's
    host key must be in `known_hosts_file`, so the copies go to that server and no other."""

    def __init__(self, settings: OffloadConfig, staging: Path):
        self.name = f"rsync:{settings.destination}"
        self.destination = settings.destination.rstrip("/")
        self.timeout_s = settings.timeout_s
        self.staging = staging
        self.ssh_args = [
            "ssh", "-F", "/dev/null", "-p", str(settings.ssh_port), "-i", str(settings.ssh_key_file),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={settings.known_hosts_file}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={int(settings.timeout_s)}"]
        self.ssh = shlex.join(self.ssh_args)

    def put(self, recording: Path, manifest: bytes, remote: PurePosixPath, sha256: str) -> None:
        """Copy the recording and its manifest into the remote folder `remote.parent` (rsync
        checks each file it sends with its own checksum; `sha256` is not needed)."""
        self.staging.mkdir(exist_ok=True)
        staged = self.staging / f"{remote.name}.json"
        staged.write_bytes(manifest)
        login, _, base = self.destination.partition(":")
        # Relative to the login's home when the destination names no folder, as `delete` is; and
        # never "./" in it: --mkpath fails on that.
        folder = f"{login}:" + "/".join([*([base.rstrip("/")] if base else []), *remote.parent.parts, ""])
        try:
            done = subprocess.run(
                ["rsync", "--times", "--perms", "--chmod=D0750,F0640", "--mkpath",
                 f"--timeout={int(self.timeout_s)}", "-e", self.ssh, "--", str(recording), str(staged), folder],
                capture_output=True, text=True, timeout=self.timeout_s * COPY_TIMEOUTS)
        except subprocess.TimeoutExpired:
            raise OffloadError(f"rsync to {folder} took longer than {self.timeout_s * COPY_TIMEOUTS:g} s") from None
        except OSError as exc:
            raise OffloadError(f"cannot run rsync: {exc}") from None
        finally:
            staged.unlink(missing_ok=True)
        if done.returncode != 0:
            raise OffloadError(f"rsync failed: {_gist(done.stderr) or f'exit status {done.returncode}'}")


    def delete(self, remote: PurePosixPath) -> None:
        """Remove a recording and its manifest from the remote folder (gone already is fine)."""
        login, _, folder = self.destination.partition(":")
        path = f"{folder or '.'}/{remote}"
        command = f"rm -f -- {shlex.quote(path)} {shlex.quote(path + '.json')}"
        try:
            done = subprocess.run([*self.ssh_args, "--", login, command], capture_output=True, text=True,
                                  timeout=self.timeout_s * 2)
        except subprocess.TimeoutExpired:
            raise OffloadError(f"deleting {path} on {login} took longer than {self.timeout_s * 2:g} s") from None
        except OSError as exc:
            raise OffloadError(f"cannot run ssh: {exc}") from None
        if done.returncode != 0:
            raise OffloadError(f"deleting {path} on {login} failed: {_gist(done.stderr) or done.returncode}")


def _gist(stderr: str) -> str:
    """The lines of rsync's and ssh's complaint that say why (not rsync's own summary, nor the
    banner of @ signs around a changed host key)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("@")]
    telling = [line for line in lines if not line.startswith(("rsync:", "rsync error:"))] or lines
    return " ".join(telling[-2:])


class S3Target:
    """A bucket of an S3-compatible store; the secret key is read from its file once."""

    def __init__(self, settings: OffloadConfig):
        self.name = f"s3:{settings.endpoint.rstrip('/')}/{settings.bucket}/{settings.prefix}"
        self.prefix = settings.prefix
        self.bucket = Bucket(settings.endpoint, settings.bucket, settings.region, settings.access_key_id,
                             settings.secret_key_file.read_text().strip(), settings.timeout_s)

    def put(self, recording: Path, manifest: bytes, remote: PurePosixPath, sha256: str) -> None:
        """Store the recording, then its manifest, under the prefix; the store checks each
        against its SHA-256. A sealed recording goes as it is, as no sound type."""
        key = f"{self.prefix}{remote}"
        kind = "application/octet-stream" if is_sealed_file(recording) else CONTENT_TYPES.get(recording.suffix)
        try:
            self.bucket.put(key, recording, sha256, kind or "application/octet-stream")
            self.bucket.put(f"{key}.json", manifest, hashlib.sha256(manifest).hexdigest(), "application/json")
        except S3Error as exc:
            raise OffloadError(str(exc)) from None

    def delete(self, remote: PurePosixPath) -> None:
        """Remove a recording and its manifest from the bucket."""
        key = f"{self.prefix}{remote}"
        try:
            self.bucket.delete(key)
            self.bucket.delete(f"{key}.json")
        except S3Error as exc:
            raise OffloadError(str(exc)) from None


def target_for(settings: OffloadConfig, staging: Path) -> RsyncTarget | S3Target:
    """The configured target; an rsync target stages manifests in `staging`."""
    return RsyncTarget(settings, staging) if settings.type == "rsync" else S3Target(settings)


def probe(settings: OffloadConfig, timeout_s: float) -> None:
    """Copy a small test file and its manifest to the target as a recording is copied (same
    key, host key check or credentials), then delete both as the copy of an erased call is
    deleted. The target gets `timeout_s` (at most) to connect and to answer at each step.
    Raises OffloadError if the copy fails, ProbeLeftOver if only the deletion does."""
    settings = settings.model_copy(update={"timeout_s": min(settings.timeout_s, timeout_s)})
    remote = PurePosixPath(PROBE_NAME)
    # A folder of its own rather than the data folder's staging: the doctor may run as root, and
    # a folder it made there would be one the recorder's user cannot write to.
    with tempfile.TemporaryDirectory(prefix="callrec-probe-") as scratch:
        try:
            target = target_for(settings, Path(scratch))
        except OSError as exc:              # the secret key file, read as the target is made
            raise OffloadError(f"cannot read {settings.secret_key_file}: {exc.strerror or exc}") from None
        sample = Path(scratch) / PROBE_NAME
        sample.write_bytes(PROBE_BODY)
        target.put(sample, PROBE_BODY, remote, hashlib.sha256(PROBE_BODY).hexdigest())
    try:
        target.delete(remote)
    except OffloadError as exc:
        raise ProbeLeftOver(str(exc)) from None


# -- manifests ------------------------------------------------------------------------------------

def canonical(document: dict) -> bytes:
    """The bytes a manifest's signature covers: its fields but `signature`, as canonical JSON."""
    body = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest(row: dict, entries: list[dict], head: dict | None) -> dict:
    """The unsigned manifest of a call's recording."""
    return {"format": MANIFEST_FORMAT, "created_at": iso_utc(time.time()),
            "recording": PurePosixPath(row["file"]).name, "sha256": row["sha256"],
            "call": {k: v for k, v in public_fields(row).items() if k not in OFFLOAD_FIELDS},
            "ledger": entries, "ledger_head": head}


def sign_manifest(document: dict, signer: DeviceSigner) -> dict:
    """The manifest with the device's public key, its fingerprint and the signature added;
    OffloadError (retried later) when it cannot be signed now."""
    try:
        public = signer.public_hex()
        signed = {**document, "device_public_key": public, "device_fingerprint": fingerprint(public)}
        signature, _ = signer.sign(canonical(signed))
    except SignerError as exc:
        raise OffloadError(f"cannot sign the manifest with the device key: {exc}") from None
    return {**signed, "signature": signature.hex()}


def verify_manifest(document: dict, recording: bytes | None = None) -> list[str]:
    """What is wrong with a manifest (and, given its bytes, the recording beside it)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    problems = []
    public = document.get("device_public_key", "")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(
            bytes.fromhex(document.get("signature", "")), canonical(document))
    except (InvalidSignature, ValueError):
        problems.append("the manifest's signature does not match: it was changed, or not signed by this key")
    if public and document.get("device_fingerprint") != fingerprint(public):
        problems.append("the device fingerprint is not that of the public key")
    if recording is not None and hashlib.sha256(recording).hexdigest() != document.get("sha256"):
        problems.append(f"{document.get('recording')} does not match the manifest's SHA-256")
    return problems


# -- the thread -----------------------------------------------------------------------------------

class Offloader(Service):
    """Copies each recording not yet offloaded to the configured target, oldest first, from its
    own thread. Call `start()` once, `notify()` when a call is finished, `stop()` at shutdown."""

    def __init__(self, settings: OffloadConfig, catalogue: Catalogue, data_dir: Path, live_dir: Path | None = None):
        super().__init__("offload")
        # Between two beats: one copy or one deletion, each bounded by the target's timeouts.
        self.beat_s = max(Service.beat_s, settings.timeout_s * COPY_TIMEOUTS)
        self.settings = settings
        self.catalogue = catalogue
        self.data_dir = Path(data_dir)
        self.target = target_for(settings, self.data_dir / STAGING_DIR)
        self.signer = DeviceSigner(live_dir, self.data_dir)       # the signer's socket is in live_dir
        self.offloaded = self.failures = 0
        self._missing: set[int] = set()        # calls whose recording is gone, already reported

    def notify(self) -> None:
        """A call was finished: look for recordings to offload (returns at once)."""
        self.wake()

    def serve(self) -> None:
        """Offload what waits, then wait for `notify()`; retry with back-off while the target fails.
        A copy in progress is let finish at `stop()`; what waits is offloaded at the next start."""
        backoff = Backoff(self.settings.retry_first_s, self.settings.retry_max_s)
        while not self.stopping.is_set():
            try:
                problem = self._offload_waiting()
            except Exception as exc:
                if self.stopping.is_set():
                    break           # the recorder closed the catalogue under a copy that outlasted stop()
                # A bug or a catalogue error must not end offloading for good: it is retried.
                log.exception("offload to %s failed unexpectedly", self.target.name)
                problem = str(exc)
            if problem is None:
                backoff.reset()
                # Erasures made by the web UI (another process) are only seen in the catalogue.
                self.wait(POLL_S)
                continue
            self.failures += 1
            delay = backoff.next()
            log.warning("offload to %s failed: %s; retrying in %g s (recording goes on)",
                        self.target.name, problem, delay)
            self.wait(delay)

    def _offload_waiting(self) -> str | None:
        """Delete the copies of erased and expired calls, then offload every waiting recording;
        return the target's problem if one stops the pass."""
        try:
            self._delete_copies()
        except OffloadError as exc:
            return str(exc)
        after = 0
        while not self.stopping.is_set():
            rows = self.catalogue.calls("id > ? AND offloaded_at IS NULL AND file IS NOT NULL", [after],
                                        limit=BATCH)
            if not rows:
                return None
            for row in rows:
                if self.stopping.is_set():
                    return None
                after = row["id"]
                try:
                    self.offload(row)
                except OffloadError as exc:
                    return str(exc)
                self.beat()
        return None

    def offload(self, row: dict) -> bool:
        """Copy one call's recording and manifest to the target and mark it; False if the
        recording is gone (the call was deleted meanwhile, or its file is missing)."""
        recording = self.data_dir / row["file"]
        if not recording.is_file():
            self._report_missing(row)
            return False
        entries, head = self.catalogue.ledger_of(row["id"])
        document = sign_manifest(manifest(row, entries, head), self.signer)
        body = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False).encode()
        self.target.put(recording, body, remote_path(row), row["sha256"])
        if not self.catalogue.mark_offloaded(row["id"], row["sha256"], self.target.name):
            return False        # erased or changed while it was copied: nothing to mark
        self.offloaded += 1
        log.info("call %s offloaded to %s", row["id"], self.target.name)
        return True

    def _delete_copies(self) -> None:
        """Remove from the target the copies of calls erased or expired on the box: an erasure must
        reach every copy. Each is marked in the ledger once the target has removed it."""
        for row in self.catalogue.offload_deletions(self.target.name):
            if self.stopping.is_set():
                return
            self.target.delete(remote_path(row))
            self.catalogue.offload_deleted(row)
            self.beat()
            log.info("call %s (%s): its copy at %s is deleted", row["call_id"], row["reason"], self.target.name)

    def _report_missing(self, row: dict) -> None:
        try:
            self.catalogue.get_call(row["id"])
        except KeyError:
            return                  # deleted by the cleaner or erased since it was listed
        if row["id"] not in self._missing:
            self._missing.add(row["id"])
            log.error("call %s: its recording %s is missing, so it cannot be offloaded "
                      "(`callrec verify` lists what else is wrong)", row["id"], row["file"])

