"""Erasing a person: after their number went through every path the product has (calls, contact,
notes, keys, audit, an export, offload to an SSH server, the webhook's outbox, a quarantined
spool), no file under the data folder, the config folder or the offload target holds it in any
form the product writes, raw bytes searched; what remains is a reference and a keyed hash."""

import json
import time
from pathlib import Path

from appliance.contacts import Contact, import_contacts
from appliance.clock import iso_utc
from appliance.store import archive
from appliance.store.archive import QUARANTINE_DIR, encode_spool, finalise, recover
from appliance.store.catalogue import Catalogue
from appliance.store.subjects import subject_hash, subject_key
from appliance.store.outbox import Outbox
from appliance.store.spool import SpoolWriter
from appliance.webhook import Webhook, call_event
from conftest import PASSWORD, RATE, callrec, tone, wait_for
from test_offload import appliance, nas, offloaded, record_calls, run_offloader  # noqa: F401 (nas: fixture)
from test_web import csrf, login, post

NUMBER = "+3225550202"
TYPED = "+32 2 555 02 02"               # as the customer gave it on the phone
NAME = "Zoë Verhaegen-Dubois"
NOTE = "wants the blue velvet sofa delivered on Tuesday"
OTHER = "+3225550101"


def forms_of_the_person() -> list[bytes]:
    """Every form the product may write the number, name and note in: as typed, normalised,
    national, international, as JSON escapes them."""
    texts = [TYPED, NUMBER, NUMBER[1:], "00" + NUMBER[1:], "0" + NUMBER[3:], NAME, NOTE]
    escaped = [json.dumps(text)[1:-1] for text in texts]
    return sorted({text.encode() for text in texts + escaped} | {NAME.encode("utf-16-le")})


def residue(folders: list[Path]) -> list[str]:
    """Which files under `folders` hold which form."""
    found = []
    for folder in folders:
        for path in (p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found += [f"{path}: {form!r}" for form in forms_of_the_person() if form in data]
    return found


def quarantined_call(data: Path, catalogue: Catalogue) -> int:
    """A call of the person whose spool could not be read: it went to quarantine."""
    spool = data / "spool" / f"t1-{time.time_ns() // 10**6}.wav"
    spool.write_bytes(b"not a WAV file")
    call_id = catalogue.add_call(line="t1", direction="incoming", started_at=iso_utc(time.time()), number=NUMBER,
                                 purpose="training", state="recording", spool=f"spool/{spool.name}")
    catalogue.update_call(call_id, **encode_spool(catalogue, data, call_id, "opus", 16000).fields, spool=None)
    assert list((data / QUARANTINE_DIR).glob(f"{call_id}-*"))
    return call_id


def test_an_erased_person_leaves_no_trace_under_the_data_config_or_offload_folders(tmp_path, nas):
    from web import create_app

    nas.start()
    config = appliance(tmp_path, nas.settings())
    data = config.recorder.data_dir
    theirs, again, someone_else = record_calls(data, 3)
    catalogue = Catalogue(data)
    for call in (theirs, again):
        catalogue.update_call(call["id"], number=NUMBER, contact_name=NAME)
    catalogue.update_call(someone_else["id"], number=OTHER)
    catalogue.set_notes(theirs["id"], NOTE, "user:owner")
    catalogue.set_notes(someone_else["id"], f"her sister, call back on 0{NUMBER[3:]}", "user:owner")
    for offset, key in enumerate("4711#"):
        catalogue.add_digit(theirs["id"], 1.0 + offset / 4, key)
    with catalogue.transaction() as db:
        import_contacts(db, [Contact(NUMBER, NAME, "Dubois & fils", NOTE)])
    quarantined = quarantined_call(data, catalogue)
    hook = Webhook("http://127.0.0.1:9/hook", "secret", catalogue)      # never started: the events wait
    for call in (theirs, again, someone_else):
        hook.send(call_event(catalogue.get_call(call["id"])))
    catalogue.close()
    run_offloader(config, lambda offloader: offloader.offloaded == 3, timeout=60)

    app = create_app(tmp_path / "appliance.toml", secure_cookies=False)
    app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
    admin = login(app, "admin")
    backend = app.extensions["callrec"]
    backend.store.hold(again["id"], f"dispute opened by {'0' + NUMBER[3:]}", "user:owner")
    backend.store.release(again["id"], "user:owner")
    assert post(admin, "/privacy/export", number=TYPED).status_code == 302
    assert wait_for(lambda: list(backend.exports_dir.glob("*.zip")), 10)
    assert residue([data]), "the test's paths never wrote the number"

    page = admin.post("/privacy/erase", data={"csrf_token": csrf(admin, "/"), "number": TYPED, "confirm": TYPED},
                      follow_redirects=True).data.decode()
    reference = page.split("Reference for the customer: ")[1].split(".")[0]
    app.extensions["callrec"].close()
    # The erased copies go; the other call's copy is sent again: its manifest had the number in its notes.
    run_offloader(config, lambda offloader: offloader.offloaded == 1
                  and not list(nas.folder.rglob(f"*{Path(theirs['file']).name}*")), timeout=60)
    assert len(offloaded(data)) == 1

    assert "3 call(s) erased" in page
    assert residue([tmp_path]) == []          # data, config and the offload target's folder
    catalogue = Catalogue(data)
    assert [call["id"] for call in catalogue.calls()] == [someone_else["id"]]
    assert not list((data / QUARANTINE_DIR).glob(f"{quarantined}-*"))
    assert catalogue.get_call(someone_else["id"])["notes"].startswith(f"her sister, call back on [erased: {reference}]")
    assert [json.loads(entry.body)["number"] for entry in Outbox(catalogue).entries()] == [OTHER]
    assert catalogue.db.execute("SELECT COUNT(*) FROM digits").fetchone()[0] == 0
    [erasure] = [e for e in catalogue.ledger.entries() if e["event"] == "erasure"]
    key = subject_key(data)
    assert erasure["detail"] == f"reference {reference}, subject {subject_hash(key, TYPED)}"
    assert subject_hash(key, "025550202") == subject_hash(key, NUMBER) != subject_hash(key, OTHER)
    catalogue.close()
    assert callrec("verify", "--data", str(data)).returncode == 0


def test_a_stop_between_archiving_a_call_and_removing_its_spool_leaves_no_second_copy(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True)
    catalogue = Catalogue(data)
    spool = data / "spool" / f"t1-{time.time_ns() // 10**6}.wav"
    writer = SpoolWriter(spool, RATE, flush_interval=0.1)
    writer.append((tone(440, 1.0, 0.3) * 32767).astype("<i2").tobytes())
    writer.close()
    call_id = catalogue.add_call(line="t1", direction="incoming", started_at=iso_utc(time.time()), number=NUMBER,
                                 purpose="training", state="recording", spool=f"spool/{spool.name}", sample_rate=RATE)
    with monkeypatch.context() as stopped:
        stopped.setattr(archive, "_remove", lambda spool: None)        # the power goes before the spool does
        finalise(catalogue, data, call_id, "complete", "opus", 16000)
    assert spool.exists() and catalogue.get_call(call_id)["spool"] is None
    assert recover(catalogue, data, "opus", 16000, {"t1": "training"}) == []
    assert not spool.exists() and not (data / QUARANTINE_DIR).exists()
    assert catalogue.get_call(call_id)["state"] == "complete"
    catalogue.close()
