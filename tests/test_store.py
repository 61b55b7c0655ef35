"""The ring-buffered store: retention by purpose, holds, eviction, the alarm, erasure, evidence."""

import hashlib
import json
import logging
import shutil
import sqlite3
import time
import zipfile
from pathlib import Path

import pytest

from appliance.store import ledger
from appliance.store.ledger import ledger_path
from appliance.store.catalogue import MIGRATIONS, Catalogue
from appliance.clock import iso_utc
from appliance.config import DEFAULT_PURPOSES, StoreConfig
from appliance.store.evidence import export_bundle, verify_bundle, verify_store
from appliance.store.retention import Store, StoreActionError
from conftest import callrec

DAY = 86400
NUMBER = "+3225551234"


@pytest.fixture
def store(tmp_path):
    catalogue = Catalogue(tmp_path)
    yield Store(catalogue, tmp_path, DEFAULT_PURPOSES, StoreConfig(min_free_mb=0, min_free_hours=0))
    catalogue.close()


def add_call(store: Store, days_ago: float, purpose: str = "training", size: int = 1000,
             state: str = "complete") -> int:
    """A finished call with a recording file of `size` bytes, catalogued as the recorder does."""
    started = iso_utc(time.time() - days_ago * DAY)
    with store.catalogue.transaction() as db:
        call_id = db.execute(
            "INSERT INTO calls (line, direction, number, started_at, purpose, state) "
            "VALUES ('t1', 'incoming', ?, ?, ?, ?)", [NUMBER, started, purpose, state]).lastrowid
        if state != "recording":
            relative = f"archive/x/{call_id:08d}-t1.opus"
            path = store.data_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            content = f"call {call_id} ".encode().ljust(size, b"a")
            path.write_bytes(content)
            digest = hashlib.sha256(content).hexdigest()
            db.execute("UPDATE calls SET file = ?, size_bytes = ?, sha256 = ?, duration_s = 60 WHERE id = ?",
                       [relative, size, digest, call_id])
            ledger.record(db, "recorded", call_id, digest, state)
    return call_id


def ids(store: Store) -> list[int]:
    return [call["id"] for call in store.catalogue.calls()]


def test_calls_expire_after_the_retention_of_their_purpose(store):
    old_training = add_call(store, 31, "training")
    young_training = add_call(store, 29, "training")
    old_agreement = add_call(store, 31, "agreement")
    report = store.clean()
    assert report.expired == 1
    assert ids(store) == [young_training, old_agreement]
    assert not (store.data_dir / f"archive/x/{old_training:08d}-t1.opus").exists()


def test_reclassifying_as_an_agreement_extends_the_expiry(store):
    call_id = add_call(store, 31, "training")
    before = store.expires_at(store.catalogue.get_call(call_id))
    store.classify(call_id, "agreement", actor="owner")
    after = store.expires_at(store.catalogue.get_call(call_id))
    assert after > before
    assert store.clean().expired == 0 and ids(store) == [call_id]
    with pytest.raises(StoreActionError, match="unknown purpose"):
        store.classify(call_id, "marketing", actor="owner")


def test_a_held_call_survives_expiry_and_eviction_and_goes_after_release(store):
    held = add_call(store, 400, "training", size=5000)
    store.hold(held, "dispute about an order", actor="owner")
    store.settings = StoreConfig(max_archive_mb=0, min_free_mb=10**9)    # always short of space
    report = store.clean()
    assert ids(store) == [held] and report.expired == 0
    store.release(held, actor="owner")
    store.settings = StoreConfig(min_free_mb=0, min_free_hours=0)
    assert store.clean().expired == 1 and ids(store) == []


def test_eviction_takes_the_oldest_first_and_never_the_call_being_recorded(store):
    recording = add_call(store, 10, state="recording")
    calls = [add_call(store, days, size=300_000) for days in (9, 8, 7, 6, 5)]
    store.settings = StoreConfig(max_archive_mb=1, min_free_mb=0, min_free_hours=0)
    report = store.clean()
    assert report.evicted == 2 and report.archive_bytes <= 1_000_000
    assert ids(store) == [recording] + calls[2:]
    assert [r[0] for r in store.catalogue.db.execute("SELECT call_id FROM tombstones")] == calls[:2]


def test_an_alarm_is_raised_when_only_held_or_restricted_calls_are_left_and_cleared_when_space_returns(store, caplog):
    held, restricted = add_call(store, 4), add_call(store, 3)
    add_call(store, 2)
    store.hold(held, "a customer disputes the order", actor="owner")
    store.restrict(restricted, "Art. 18 request", actor="privacy officer")
    store.settings = StoreConfig(min_free_mb=10**9)
    with caplog.at_level(logging.ERROR):
        report = store.clean()
    assert ids(store) == [held, restricted]
    assert "only held or restricted calls can go (2 of them" in report.alarm
    assert store.alarm() == report.alarm and "storage alarm" in caplog.text
    store.settings = StoreConfig(min_free_mb=0, min_free_hours=0)
    assert store.clean().alarm is None and store.alarm() is None


def test_erasure_leaves_no_file_no_personal_data_and_a_tombstone(store):
    call_id = add_call(store, 1)
    store.hold(call_id, "dispute", actor="owner")
    with pytest.raises(StoreActionError, match="on hold"):
        store.erase(call_id, actor="dpo")
    store.release(call_id, actor="owner")
    store.erase(call_id, actor="dpo", reason="art. 17 request")
    assert not list((store.data_dir / "archive").rglob("*.opus"))
    assert ids(store) == []
    tomb = dict(store.catalogue.db.execute("SELECT * FROM tombstones").fetchone())
    assert tomb["call_id"] == call_id and tomb["reason"] == "erased"
    store.catalogue.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in store.data_dir.glob("catalogue.db*"):
        assert NUMBER.encode() not in path.read_bytes(), f"the number survives in {path.name}"
    actions = [r[0] for r in store.catalogue.db.execute("SELECT action FROM audit ORDER BY id")]
    assert actions == ["hold", "release", "erased"]
    assert verify_store(store.catalogue, store.data_dir) == []


def test_files_of_deleted_rows_are_removed_after_a_crash_between_the_two(store):
    orphan = store.data_dir / "archive/x/lost.opus"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    with store.catalogue.transaction() as db:
        db.execute("INSERT INTO pending_deletions (path) VALUES ('archive/x/lost.opus')")
    store.clean()
    assert not orphan.exists()


def test_verify_names_a_changed_byte_in_a_recording_or_in_the_ledger(store, tmp_path):
    first, second = add_call(store, 2), add_call(store, 1)
    store.hold(first, "dispute", actor="owner")
    assert verify_store(store.catalogue, tmp_path) == []
    path = tmp_path / f"archive/x/{second:08d}-t1.opus"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    chain = sqlite3.connect(ledger_path(tmp_path), isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        chain.execute("UPDATE ledger SET detail = 'x' WHERE seq = 1")
    # Someone with the ledger's file drops the guard and rewrites history.
    chain.execute("DROP TRIGGER ledger_append_only_update")
    chain.execute("UPDATE ledger SET event = 'released' WHERE seq = 3")
    chain.close()
    problems = verify_store(store.catalogue, tmp_path)
    assert any(f"call {second}:" in p and "does not match its SHA-256" in p for p in problems)
    assert any("ledger entry 3" in p for p in problems)
    result = callrec("verify", "--data", str(tmp_path), check=False)
    assert result.returncode == 1 and "MISMATCH" in result.stdout


def test_a_bundle_verifies_offline_and_any_tampering_fails(store, tmp_path):
    call_id = add_call(store, 1)
    bundle = tmp_path / "bundle.zip"
    manifest = export_bundle(store.catalogue, tmp_path, [call_id], bundle, actor="dpo")
    assert verify_bundle(bundle)[0] == []
    assert verify_bundle(bundle, manifest["device_fingerprint"])[0] == []
    assert list(store.catalogue.ledger.entries())[-1]["event"] == "exported"

    def rewrite(name: str, change) -> Path:
        out = tmp_path / f"tampered-{name.replace('/', '-')}.zip"
        with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w") as dst:
            for item in src.namelist():
                data = src.read(item)
                dst.writestr(item, change(data) if item == name else data)
        return out

    def edit_manifest(data: bytes) -> bytes:
        body = json.loads(data)
        body["calls"][0]["started_at"] = "2020-01-01T00:00:00.000Z"
        return json.dumps(body, indent=1, sort_keys=True).encode()

    recording = manifest["calls"][0]["recording"]
    assert "signature does not match" in " ".join(verify_bundle(rewrite("manifest.json", edit_manifest))[0])
    assert "does not match its SHA-256" in " ".join(verify_bundle(rewrite(recording, lambda d: d[:-1] + b"!"))[0])
    assert "not by the expected device" in " ".join(verify_bundle(bundle, "0000:0000")[0])
    result = callrec("verify", str(rewrite("manifest.json", edit_manifest)), check=False)
    assert result.returncode == 1 and "MISMATCH" in result.stdout


def test_the_device_key_is_readable_by_the_appliance_only(store, tmp_path):
    export_bundle(store.catalogue, tmp_path, [add_call(store, 1)], tmp_path / "b.zip", actor="dpo")
    key = tmp_path / "keys" / "device-ed25519.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700


def _open_catalogue(data_dir: str, start) -> str:
    start.wait()
    try:
        Catalogue(Path(data_dir)).close()
        return "ok"
    except Exception as exc:        # reported to the test, which shows it
        return f"{type(exc).__name__}: {exc}"


def test_processes_opening_a_new_catalogue_at_once_all_get_it(tmp_path):
    # At first boot the recorder, the web UI and the doctor may all create the catalogue at once.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        for attempt in range(6):
            start = manager.Barrier(4)
            folder = str(tmp_path / f"data{attempt}")
            assert pool.starmap(_open_catalogue, [(folder, start)] * 4) == ["ok"] * 4
            assert Catalogue(Path(folder)).db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_verify_names_an_edited_or_deleted_audit_entry_but_accepts_what_an_erasure_took_out(store):
    from appliance.store.erasure import erase_subject

    with store.catalogue.transaction() as db:            # written before the audit trail was chained
        db.execute("INSERT INTO audit (at, actor, action, detail) VALUES ('2026-01-05T12:00:00Z', 'admin', 'login', NULL)")
    call_id = add_call(store, 1)
    store.hold(call_id, f"dispute opened by {NUMBER}", actor="user:owner")
    store.release(call_id, actor="user:owner")
    store.catalogue.add_audit("user:clerk", "listen", call_id, "00000001-t1.opus", "192.168.1.20")
    store.catalogue.add_audit("user:owner", "settings", None, "purpose.training.retention_days = 60")
    store.catalogue.add_audit("user:owner", "login")
    report = erase_subject(store, NUMBER, "user:dpo")
    db = store.catalogue.db
    details = [row[0] for row in db.execute("SELECT detail FROM audit WHERE action IN ('hold', 'release')")]
    assert details == [f"dispute opened by [erased: {report.reference}]"] * 2
    assert verify_store(store.catalogue, store.data_dir) == []
    assert db.execute("SELECT COUNT(*) FROM audit WHERE hash IS NULL").fetchone()[0] == 0
    for sql in ("DELETE FROM audit WHERE action = 'login'", "UPDATE audit SET actor = 'x' WHERE action = 'listen'"):
        with pytest.raises(sqlite3.IntegrityError, match="the audit trail is append-only"):
            db.execute(sql)

    store.catalogue.checkpoint()

    def tampered(sql: str) -> list[str]:
        """What verify says of a copy of the data folder changed by `sql` (as sqlite3 would)."""
        copy = store.data_dir.parent / f"{store.data_dir.name}-tampered-{time.monotonic_ns()}"
        shutil.copytree(store.data_dir, copy)
        with sqlite3.connect(copy / "catalogue.db") as raw:
            raw.execute("DROP TRIGGER audit_no_delete")       # as whoever holds the box can
            raw.execute("DROP TRIGGER audit_no_update")
            raw.execute(sql)
        raw.close()
        catalogue = Catalogue(copy)
        try:
            return verify_store(catalogue, copy)
        finally:
            catalogue.close()

    [listen] = [row[0] for row in db.execute("SELECT id FROM audit WHERE action = 'listen'")]
    assert tampered("UPDATE audit SET actor = 'user:owner' WHERE action = 'listen'") == [
        f"audit entry {listen} (listen, {db.execute('SELECT at FROM audit WHERE id = ?', [listen]).fetchone()[0]}) was changed"]
    assert [p for p in tampered("UPDATE audit SET detail = 'purpose.training.retention_days = 3650' "
                                "WHERE action = 'settings'") if "its detail was changed" in p]
    assert [p for p in tampered("UPDATE audit SET detail = 'dispute opened by [erased: E-20260101-abcdef]' "
                                "WHERE action = 'hold'") if "its detail was changed" in p]
    deleted = tampered(f"DELETE FROM audit WHERE id = {listen}")
    assert f"audit entries {listen} to {listen} are missing" in deleted
    assert any("does not follow the entry before it" in p for p in deleted)
    assert verify_store(store.catalogue, store.data_dir) == []


def test_space_pressure_takes_training_first_and_an_agreement_only_after_the_alarm_stood_its_grace(store, caplog):
    agreement = add_call(store, 9, "agreement", size=400_000)
    legal = add_call(store, 8, "legal-obligation", size=400_000)
    training = add_call(store, 5, "training", size=400_000)
    store.settings = StoreConfig(max_archive_mb=1, min_free_mb=0, min_free_hours=0)
    assert store.clean().evicted == 1 and ids(store) == [agreement, legal]        # not the oldest: the training call
    store.settings = StoreConfig(min_free_mb=10**9, protected_grace_hours=24)
    now = time.time()
    with caplog.at_level(logging.ERROR):
        report = store.clean(now)
    assert report.evicted == 0 and ids(store) == [agreement, legal]
    assert "only calls kept for agreement" in report.alarm and f"from {iso_utc(now + 24 * 3600)[:16]}" in report.alarm
    assert "only calls kept for a contract or the law are left" in caplog.text
    assert store.clean(now + 23 * 3600).evicted == 0
    assert store.clean(now + 24 * 3600 + 1).evicted == 2 and ids(store) == []
    store.settings = StoreConfig(min_free_mb=0, min_free_hours=0)
    assert store.clean().alarm is None and store.catalogue.db.execute(
        "SELECT COUNT(*) FROM status WHERE key LIKE 'protected%'").fetchone()[0] == 0
    assert [r[0] for r in store.catalogue.db.execute("SELECT call_id FROM tombstones")] == [training, agreement, legal]
