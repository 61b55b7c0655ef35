"""Tamper evidence: checking the store against its hashes and ledger, and signed export bundles
that can be checked offline, away from the appliance.

A bundle is a zip: the recordings (in the clear, also from a sealed store), `manifest.json` (each call's catalogue fields, with the legal
basis and end of retention stored when it was recorded, its ledger entries and the ledger head at
export time, the device's public key; for a customer's request also the controller, the authority
and the recipients, the calls of theirs that have no recording, and the access report's hash) and
`manifest.sig`, the device key's Ed25519 signature of the manifest's exact bytes; for a customer's
request, `report.html`, the access report in their language. A recording sealed on the
appliance keeps, as its `sha256`, the sealed file's hash that the ledger holds, and gets
`plain_sha256`, the hash of the plain file in the bundle: the signed manifest binds the two.
"""

import hashlib
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

from appliance.store import auditchain, ledger, ledgerkeeper
from appliance.store.archive import ARCHIVE_DIR, sha256_file, sha256_of
from appliance.store.recording import is_sealed_file, open_recording
from appliance.store.sealing import Opener
from appliance.store.catalogue import Catalogue, audit, public_fields
from appliance.store.personal import opened_call
from appliance.clock import iso_utc
from appliance.keys import AUDIT_KEY_FILE, DeviceKeyError, fingerprint, shared_key
from appliance.signer import DeviceSigner

BUNDLE_FORMAT = "callrec-bundle-1"
REPORT_FILE = "report.html"


def verify_store(catalogue: Catalogue, data_dir: Path) -> list[str]:
    """Everything in a data folder that does not match: the ledger chain, the audit trail's
    chain, each archived file against its row and its `recorded` ledger entry, and archive files
    no call owns."""
    return (verify_ledger(catalogue) + verify_audit(catalogue, data_dir) + verify_recordings(catalogue, data_dir)
            + unowned_files(catalogue, data_dir))


def verify_audit(catalogue: Catalogue, data_dir: Path) -> list[str]:
    """The audit trail's chain, entry by entry (see `appliance.store.auditchain`)."""
    with catalogue.read() as db:
        rows = db.execute("SELECT * FROM audit ORDER BY id").fetchall()
    with catalogue.ledger.read() as db:
        erasures = {match for (detail,) in db.execute("SELECT detail FROM ledger WHERE event = 'erasure'")
                    for match in re.findall(r"reference (\S+),", detail or "")}
    if not any(row["hash"] for row in rows):
        return []
    try:
        key = shared_key(data_dir, AUDIT_KEY_FILE, auditchain.KEY_LABEL, create=False)
    except DeviceKeyError:
        return ["the audit key is missing: the audit trail's details cannot be checked"]
    return auditchain.check(rows, key, erasures)


def verify_ledger(catalogue: Catalogue) -> list[str]:
    """The ledger's chain, entry by entry; who may write it; events still waiting to be put on it."""
    problems = ledgerkeeper.problems(catalogue.path.parent)
    problems += ledger.check_chain(catalogue.ledger.entries())
    if waiting := catalogue.ledger_waiting():
        problems.append(f"{waiting} event(s) wait in the catalogue to be put on the ledger: "
                        "is the signer running? (systemctl status callrec-signer)")
    return problems


def verify_recordings(catalogue: Catalogue, data_dir: Path, where: str = "file IS NOT NULL") -> list[str]:
    """Each archived file (of the calls matching `where`) against its row and its ledger entry."""
    problems = []
    with catalogue.read() as db:
        calls = db.execute(f"SELECT id, file, sha256 FROM calls WHERE {where} ORDER BY id").fetchall()
    for call_id, relative, sha in calls:
        path = Path(data_dir) / relative
        if not path.is_file():
            problems.append(f"call {call_id}: its recording {relative} is missing")
            continue
        if sha256_file(path) != sha:
            problems.append(f"call {call_id}: {relative} does not match its SHA-256 (the file was changed)")
        with catalogue.ledger.read() as db:
            # A store sealed after the call was recorded names the sealed file's hash in a later entry.
            recorded = db.execute("SELECT sha256 FROM ledger WHERE call_id = ? AND event IN ('recorded', 'sealed') "
                                  "ORDER BY seq DESC LIMIT 1", [call_id]).fetchone()
        if recorded is None:
            problems.append(f"call {call_id}: no `recorded` entry in the ledger")
        elif recorded[0] != sha:
            problems.append(f"call {call_id}: its catalogued SHA-256 differs from the ledger's")
    return problems


def unowned_files(catalogue: Catalogue, data_dir: Path) -> list[str]:
    """Archive files that belong to no call: a deleted call must leave no recording behind."""
    problems = []
    for folder, _, files in os.walk(Path(data_dir) / ARCHIVE_DIR):
        for name in files:
            if name.endswith(".part"):
                continue
            relative = str((Path(folder) / name).relative_to(data_dir))
            with catalogue.read() as db:
                owned = db.execute("SELECT 1 FROM calls WHERE file = ?", [relative]).fetchone()
            if owned is None:
                problems.append(f"{relative} belongs to no call (deleted calls must leave no recording)")
    return problems


def export_bundle(catalogue: Catalogue, data_dir: Path, call_ids: list[int], out: Path, actor: str,
                  address: str | None = None, progress=None, report: str | None = None,
                  controller: dict | None = None, without_recording: list[int] = (),
                  opener: Opener | None = None, signer: DeviceSigner | None = None) -> dict:
    """Write a signed bundle of the given calls to `out`; record the export in the ledger and the
    audit trail. Returns the manifest. `progress(done, total)` is called after each recording.
    A sealed store's recordings and fields are written opened with `opener` (StoreLocked without
    it): a bundle is made to be read.
    For a customer's request: `report` (the access report's HTML), `controller` (the facts of
    `appliance.transparency.controller_facts`) and the ids of their calls `without_recording`.
    `signer` signs the manifest (by default, the key file in this process: only where no signer
    runs); SigningWaits while a sealed store's key waits for a login, before anything is written."""
    signer = signer if signer is not None else DeviceSigner(None, data_dir, apart=False)
    public = signer.public_hex()
    entries = []
    with catalogue.read() as db:
        others = [public_fields(opened_call(opener, dict(row))) for call_id in without_recording
                  if (row := db.execute("SELECT * FROM calls WHERE id = ?", [call_id]).fetchone()) is not None]
        for call_id in call_ids:
            row = db.execute("SELECT * FROM calls WHERE id = ?", [call_id]).fetchone()
            if row is None:
                raise KeyError(call_id)
            call = dict(row)
            if not call["file"]:
                raise ValueError(f"call {call_id} has no recording to export")
            fields = public_fields(opened_call(opener, call))
            fields["recording"] = f"recordings/{Path(call['file']).name}"
            entries.append((fields, data_dir / call["file"]))
    with catalogue.ledger.read() as db:
        for fields, _ in entries:
            fields["ledger"] = [dict(e) for e in db.execute(
                "SELECT * FROM ledger WHERE call_id = ? ORDER BY seq", [fields["id"]])]
        head = ledger.head(db)
    for fields, path in entries:
        if is_sealed_file(path):
            with open_recording(path, opener) as plain:
                fields["plain_sha256"] = sha256_of(plain)
    manifest = {"format": BUNDLE_FORMAT, "created_at": iso_utc(time.time()), "device_public_key": public,
                "device_fingerprint": fingerprint(public), "ledger_head": head,
                "calls": [fields for fields, _ in entries]}
    if controller is not None:
        manifest["controller"] = controller
        manifest["calls_without_recording"] = others
    if report is not None:
        manifest["report"] = {"file": REPORT_FILE, "sha256": hashlib.sha256(report.encode()).hexdigest()}
    body = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode()
    signature, _ = signer.sign(body)
    partial = Path(str(out) + ".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as bundle:
        bundle.writestr("manifest.json", body)
        bundle.writestr("manifest.sig", signature.hex())
        if report is not None:
            bundle.writestr(REPORT_FILE, report)
        for done, (fields, path) in enumerate(entries, start=1):
            if "plain_sha256" in fields:
                with open_recording(path, opener) as plain, bundle.open(fields["recording"], "w") as copy:
                    shutil.copyfileobj(plain, copy, 1 << 20)
            else:
                bundle.write(path, fields["recording"])
            if progress is not None:
                progress(done, len(entries))
    os.replace(partial, out)
    with catalogue.transaction() as db:
        for fields, _ in entries:
            ledger.record(db, "exported", fields["id"], fields["sha256"])
            audit(db, actor, "export", fields["id"], Path(out).name, address)
    return manifest


def verify_bundle(path: Path, expected_fingerprint: str | None = None) -> tuple[list[str], dict | None]:
    """Check a bundle offline: signature, each recording against its hash, each ledger entry
    against its own hash. Returns (problems, manifest)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        bundle = zipfile.ZipFile(path)
        body = bundle.read("manifest.json")
        signature = bytes.fromhex(bundle.read("manifest.sig").decode())
        manifest = json.loads(body)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        return [f"{path} is not a readable bundle: {exc}"], None
    problems = []
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"unknown bundle format {manifest.get('format')!r}")
    public = manifest.get("device_public_key", "")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(signature, body)
    except (InvalidSignature, ValueError):
        problems.append("the manifest's signature does not match: the manifest was changed or not "
                        "signed by this device key")
    if expected_fingerprint and fingerprint(public) != expected_fingerprint:
        problems.append(f"signed by {fingerprint(public)}, not by the expected device {expected_fingerprint}")
    head = manifest.get("ledger_head")
    if head is not None and (problem := ledger.check_entry(head)) is not None:
        problems.append(f"the ledger head: {problem}")
    listed = {"manifest.json", "manifest.sig"}
    if (report := manifest.get("report")) is not None:
        listed.add(report["file"])
        try:
            if hashlib.sha256(bundle.read(report["file"])).hexdigest() != report["sha256"]:
                problems.append(f"{report['file']} does not match its SHA-256 (the report was changed)")
        except KeyError:
            problems.append(f"the report {report['file']} is missing")
    for call in manifest.get("calls", []):
        listed.add(call["recording"])
        try:
            data = bundle.read(call["recording"])
        except KeyError:
            problems.append(f"call {call['id']}: its recording {call['recording']} is missing")
            continue
        if hashlib.sha256(data).hexdigest() != call.get("plain_sha256", call["sha256"]):
            problems.append(f"call {call['id']}: {call['recording']} does not match its SHA-256")
        for entry in call.get("ledger", []):
            if (problem := ledger.check_entry(entry)) is not None:
                problems.append(problem)
        if not any(e["event"] == "recorded" and e["sha256"] == call["sha256"] for e in call.get("ledger", [])):
            problems.append(f"call {call['id']}: no ledger entry records this recording")
    for extra in set(bundle.namelist()) - listed:
        problems.append(f"{extra} is in the bundle but not in its manifest")
    return problems, manifest
