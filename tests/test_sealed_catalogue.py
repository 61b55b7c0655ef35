"""A sealed store's personal fields: the real recorder (an analog line, a SIP trunk) writes a
caller's number and keys sealed, the web adds notes, a hold and a contact, and no file under the
data folder holds any of them in any written form; a login of a user with a key slot opens them for
the pages, a wrong password opens nothing, slots follow the users, calls are found and erased by
number once the web has tagged them, and a plain store's fields are sealed in place."""

import json
import re
import time

import numpy as np
import pyotp
import pytest

from appliance.store.catalogue import Catalogue
from appliance.store.keyslots import KeySlotError, KeySlots, recovery_text
from appliance.store.sealing import Opener
from appliance.store.subjects import subject_hash
from appliance.sip import g711
from appliance.webhook import call_event
from conftest import PASSWORD, RATE, callrec, record_call, tone, wait_for, write_config, write_scenario, write_wav
from sipp.harness import write_pcap
from test_sip import call_through, trunk  # noqa: F401 (trunk: fixture)
from test_web import csrf, login, post

NUMBER = "+3225551234"
NATIONAL = "02 555 12 34"
NAME = "Zoë Verhaegen-Dubois"
NOTE = "wants the blue velvet sofa delivered on Tuesday"
REASON = "dispute opened by Zoë about the sofa"
KEYS = "4711#"
OTHER = "+32470123456"
DIALLED = "0470123456"


def written_forms_of_the_person() -> list[bytes]:
    """Every form the number, name, note and hold reason may be written in: E.164, without "+",
    international and national, with spaces, as JSON escapes them, and the name in UTF-16. (Keys
    typed are one character each, found by chance in any file: the digits table is checked.)"""
    texts = [NUMBER, NUMBER[1:], "00" + NUMBER[1:], "0" + NUMBER[3:], NATIONAL, "+32 2 555 12 34",
             OTHER, OTHER[1:], DIALLED, "047 012 34 56", NAME, NOTE, REASON]
    escaped = [json.dumps(text)[1:-1] for text in texts]
    return sorted({text.encode() for text in texts + escaped} | {NAME.encode("utf-16-le")})


def residue(data) -> list[str]:
    """Which files under `data` hold which form."""
    found = []
    for path in (p for p in data.rglob("*") if p.is_file()):
        content = path.read_bytes()
        found += [f"{path}: {form!r}" for form in written_forms_of_the_person() if form in content]
    return found


@pytest.fixture(scope="module")
def sealed_run(tmp_path_factory):
    """A sealed store (no slot yet), an answered call from NUMBER (caller ID by modem) in which the
    caller keys KEYS (heard: the line has a pause code), then an outgoing call dialling OTHER, recorded by the real
    recorder on a simulated analog line. Yields (config, data, recovery key text)."""
    folder = tmp_path_factory.mktemp("sealed")
    data = folder / "data"
    data.mkdir()
    secret = KeySlots(data).create()
    config = write_config(folder, recorder={"data_dir": str(data), "ring_gap_s": 3.0},
                          line={"notice_incoming": False, "pause_code": "*9"})
    silence = write_wav(folder / "silence.wav", np.zeros(3 * RATE))
    scenario = write_scenario(folder, [
        {"direction": "incoming", "at": 0.5, "rings": 1, "caller_id": NUMBER, "talk": 4.0,
         "dtmf": [{"at": 1.0, "digits": KEYS}]},
        {"direction": "outgoing", "at": 8.0, "audio": str(silence), "dtmf": [{"at": 0.3, "digits": DIALLED}]},
    ], ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    return config, data, recovery_text(secret)


def test_the_recorder_writes_numbers_and_keys_sealed_and_the_rest_clear(sealed_run):
    _config, data, _recovery = sealed_run
    catalogue = Catalogue(data)
    answered, outgoing = catalogue.calls()
    assert answered["number"].startswith("sealed:") and outgoing["number"].startswith("sealed:")
    assert answered["state"] == outgoing["state"] == "complete" and outgoing["direction"] == "outgoing"
    assert answered["duration_s"] > 2 and answered["line"] == "t1" and answered["sha256"]
    keys = catalogue.digits(answered["id"])
    assert len(keys) == len(KEYS) and all(key.startswith("sealed:") for _offset, key in keys)
    assert len(catalogue.digits(outgoing["id"])) == len(DIALLED)
    assert answered["number_tag"] is None       # the recorder has no secret to tag with
    event = call_event(answered)                # the CRM's event: nothing personal waits in the outbox
    assert event["number"] is None and event["contact_name"] is None and event["id"] == answered["id"]
    catalogue.close()
    assert residue(data) == []


def test_a_login_unlocks_the_store_and_the_pages_show_what_was_sealed(sealed_run):
    from web import create_app
    from web.keyring import holder

    config, data, recovery = sealed_run
    # The technician gives the first admin a slot with the recovery key (the store had none).
    made = callrec("user", "password", "admin", "--role", "admin", "--recovery-key", "--config", str(config),
                   input=f"{recovery}\n{PASSWORD}\n{PASSWORD}\n")
    assert "has no key slot" not in made.stdout
    app = create_app(config, secure_cookies=False)
    backend = app.extensions["callrec"]
    accounts = backend.accounts
    admin_id = next(user["id"] for user in accounts.users() if user["name"] == "admin")
    assert KeySlots(data).holders() == [holder(admin_id)]
    try:
        accounts.add_user("clerk", PASSWORD, "staff", None)        # added while locked: no slot
        clerk = login(app, "clerk")
        assert backend.locked
        status = clerk.get("/status").data.decode()
        assert "The store is locked since start-up" in status
        page = clerk.get("/").data.decode()
        assert NUMBER not in page and "locked" in page and 'class="number"' in page

        wrong = app.test_client()
        refused = wrong.post("/login", data={"csrf_token": csrf(wrong), "name": "admin", "password": "not the password"})
        assert refused.status_code == 401 and backend.locked
        with pytest.raises(KeySlotError):
            KeySlots(data).unlock(holder(admin_id), "not the password")

        admin = login(app, "admin")
        assert not backend.locked
        assert "The store is locked" not in admin.get("/status").data.decode()
        calls = Catalogue(data).calls()
        answered = calls[0]
        # The clerk's first login since the unlock gives them their slot.
        clerk_id = next(user["id"] for user in accounts.users() if user["name"] == "clerk")
        login(app, "clerk")
        assert holder(clerk_id) in KeySlots(data).holders()

        post(admin, f"/calls/{answered['id']}/notes", notes=NOTE)
        post(admin, f"/calls/{answered['id']}/hold", reason=REASON)
        post(admin, "/contacts/add", number=NATIONAL, name=NAME, company="", note="")
        shown = admin.get(f"/calls/{answered['id']}").data.decode()
        assert NUMBER in shown and NAME in shown and NOTE in shown and REASON in shown
        assert re.sub(r"<[^>]+>", "", shown.split(">Keys</dt>")[1].split("</dd>")[0]).strip() == KEYS

        # Search by number in another written form, once the web has tagged the recorder's rows.
        assert wait_for(lambda: Catalogue(data).count_untagged() == 0, 10)
        found = admin.get("/", query_string={"number": NATIONAL}).data.decode()
        assert f"/calls/{answered['id']}\"" in found and f"/calls/{calls[1]['id']}\"" not in found
        dialled = admin.get("/", query_string={"number": OTHER}).data.decode()
        assert f"/calls/{calls[1]['id']}\"" in dialled and DIALLED in dialled
        by_name = admin.get("/", query_string={"q": "verhaegen"}).data.decode()
        assert f"/calls/{answered['id']}\"" in by_name

        # A new user gets a slot with their password; a reset password re-wraps it; deleting removes it.
        post(admin, "/settings/users/add", name="temp", password=PASSWORD, role="staff")
        temp_id = next(user["id"] for user in accounts.users() if user["name"] == "temp")
        assert KeySlots(data).unlock(holder(temp_id), PASSWORD) == backend.secret
        post(admin, f"/settings/users/{temp_id}", action="password", password="another long password here")
        assert KeySlots(data).unlock(holder(temp_id), "another long password here") == backend.secret
        with pytest.raises(KeySlotError):
            KeySlots(data).unlock(holder(temp_id), PASSWORD)
        post(admin, f"/settings/users/{temp_id}", action="delete")
        assert holder(temp_id) not in KeySlots(data).holders()
    finally:
        backend.close()
    catalogue = Catalogue(data)
    catalogue.checkpoint()
    catalogue.close()
    assert residue(data) == []


def test_a_locked_store_answers_423_for_personal_fields_through_the_api(sealed_run):
    from web import create_app

    config, data, _recovery = sealed_run
    app = create_app(config, secure_cookies=False)
    backend = app.extensions["callrec"]
    try:
        token = backend.accounts.add_token("crm", "supervisor", None, "user:admin")
        headers = {"Authorization": f"Bearer {token}"}
        client = app.test_client()
        answered = Catalogue(data).calls()[0]
        assert client.get("/api/v1/calls", headers=headers).status_code == 423
        assert client.get(f"/api/v1/calls/{answered['id']}", headers=headers).status_code == 423
        login(app, "admin")
        body = client.get(f"/api/v1/calls/{answered['id']}", headers=headers).get_json()
        assert body["number"] == NUMBER and "".join(digit["key"] for digit in body["digits"]) == KEYS
    finally:
        backend.close()


def test_the_first_admin_of_a_sealed_store_without_slots_gets_one_with_the_recovery_key(tmp_path):
    from web import create_app
    from web.keyring import holder

    data = tmp_path / "data"
    data.mkdir()
    recovery = recovery_text(KeySlots(data).create())
    config = write_config(tmp_path, recorder={"data_dir": str(data)})
    app = create_app(config, secure_cookies=False)
    backend = app.extensions["callrec"]
    try:
        code = backend.accounts.setup_code()
        client = app.test_client()
        assert 'name="recovery"' in client.get("/setup").data.decode()
        form = {"code": code, "name": "owner", "password": PASSWORD, "confirm": PASSWORD}
        wrong = recovery_text(bytes(32))
        refused = client.post("/setup", data={"csrf_token": csrf(client, "/setup"), **form, "recovery": wrong})
        assert refused.status_code == 400 and b"not the store&#39;s recovery key" in refused.data
        assert backend.accounts.needs_setup() and backend.locked and KeySlots(data).holders() == []
        done = client.post("/setup", data={"csrf_token": csrf(client, "/setup"), **form, "recovery": recovery.lower()})
        assert done.status_code == 302 and not backend.locked
        [owner] = backend.accounts.users()
        assert KeySlots(data).unlock(holder(owner["id"]), PASSWORD) == backend.secret
    finally:
        backend.close()


def test_an_erasure_in_a_sealed_store_finds_the_calls_by_tag_and_redacts_sealed_notes(tmp_path):
    from web import create_app
    from web.keyring import set_slot

    data = tmp_path / "data"
    data.mkdir()
    secret = KeySlots(data).create()
    config = write_config(tmp_path, recorder={"data_dir": str(data)})
    catalogue = Catalogue(data)
    theirs = [record_call(catalogue, data, number=number) for number in (NUMBER, "025551234")]
    other = record_call(catalogue, data, number=OTHER)
    catalogue.set_notes(other["id"], f"her sister, call back on {NATIONAL}", "user:owner")
    catalogue.close()
    app = create_app(config, secure_cookies=False)
    backend = app.extensions["callrec"]
    try:
        admin = backend.accounts.add_user("admin", PASSWORD, "admin", None)
        set_slot(data, admin.id, PASSWORD, secret)
        client = login(app, "admin")
        post(client, "/contacts/add", number=NUMBER, name=NAME, company="", note="")
        page = client.post("/privacy/erase", data={"csrf_token": csrf(client, "/"), "number": NATIONAL,
                                                   "confirm": NATIONAL}, follow_redirects=True).data.decode()
        assert "2 call(s) erased" in page
        reference = page.split("Reference for the customer: ")[1].split(".")[0]
    finally:
        backend.close()
    catalogue = Catalogue(data)
    opener = Opener(secret)
    [left] = catalogue.calls()
    assert left["id"] == other["id"] and left["id"] not in [call["id"] for call in theirs]
    assert opener.open_field(left["notes"], "notes") == f"her sister, call back on [erased: {reference}]"
    assert catalogue.db.execute("SELECT COUNT(*) FROM contacts").fetchone()[0] == 0
    [detail] = [e["detail"] for e in catalogue.ledger.entries() if e["event"] == "erasure"]
    assert detail == f"reference {reference}, subject {subject_hash(opener.derived_key(b'subjects'), NUMBER)}"
    catalogue.close()


def test_the_command_line_finds_corrects_and_erases_by_number_with_the_recovery_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    secret = KeySlots(data).create()
    recovery = recovery_text(secret) + "\n"
    catalogue = Catalogue(data)
    theirs = [record_call(catalogue, data, number=number)["id"] for number in (NUMBER, "025551234")]
    other = record_call(catalogue, data, number=OTHER)["id"]
    catalogue.close()

    wrong = callrec("calls", "--number", NATIONAL, "--data", str(data), input=recovery_text(bytes(32)) + "\n",
                    check=False)
    assert wrong.returncode != 0 and "another store" in wrong.stderr
    found = json.loads(callrec("calls", "--number", NATIONAL, "--json", "--data", str(data), input=recovery).stdout)
    assert sorted(call["id"] for call in found) == sorted(theirs)
    assert {call["number"] for call in found} == {NUMBER, "025551234"}       # opened, as each was stored
    csv = tmp_path / "contacts.csv"
    csv.write_text(f"number,name\n{OTHER},{NAME}\n")
    callrec("contacts", "import", str(csv), "--data", str(data), input=recovery)
    callrec("rectify", str(other), "--name", "Ann Peeters", "--data", str(data), input=recovery)
    erased = callrec("erase", "--number", NATIONAL, "--yes", "--data", str(data), input=recovery)
    assert "2 call(s) erased" in erased.stdout

    opener, catalogue = Opener(secret), Catalogue(data)
    [left] = catalogue.calls()
    assert left["id"] == other and opener.open_field(left["contact_name"], "contact_name") == "Ann Peeters"
    [contact] = catalogue.db.execute("SELECT name FROM contacts").fetchall()
    assert contact[0].startswith("sealed:") and opener.open_field(contact[0], "contact.name") == "Ann Peeters"
    assert [e["event"] for e in catalogue.ledger.entries() if e["call_id"] in theirs].count("erased") == 2
    catalogue.checkpoint()
    catalogue.close()
    assert not [form for form in (NUMBER.encode(), NUMBER[1:].encode(), NAME.encode())
                if any(form in path.read_bytes() for path in data.rglob("*") if path.is_file())]


def test_with_a_second_factor_the_store_is_unlocked_only_once_the_code_is_right(tmp_path):
    from web import create_app
    from web.keyring import set_slot

    data = tmp_path / "data"
    data.mkdir()
    secret = KeySlots(data).create()
    app = create_app(write_config(tmp_path, recorder={"data_dir": str(data)}), secure_cookies=False)
    backend = app.extensions["callrec"]
    try:
        accounts = backend.accounts
        admin = accounts.add_user("admin", PASSWORD, "admin", None)
        set_slot(data, admin.id, PASSWORD, secret)
        factor = accounts.new_second_factor_secret()
        accounts.set_second_factor(admin.id, factor, pyotp.TOTP(factor).now())
        client = app.test_client()
        step = client.post("/login", data={"csrf_token": csrf(client), "name": "admin", "password": PASSWORD})
        assert step.location.endswith("/login/code") and backend.locked
        wrong = client.post("/login/code", data={"csrf_token": csrf(client, "/login/code"), "code": "000000"})
        assert wrong.status_code == 401 and backend.locked
        code = pyotp.TOTP(factor).at(time.time() + 30)
        assert client.post("/login/code", data={"csrf_token": csrf(client, "/login/code"), "code": code}).status_code == 302
        assert not backend.locked and backend.secret == secret
    finally:
        backend.close()


def test_a_plain_stores_personal_fields_are_sealed_in_place_and_tagged_after_the_unlock(tmp_path):
    from appliance.contacts import Contact
    from appliance.store.directory import Directory
    from appliance.store.personal import fill_all_tags, seal_fields
    from appliance.store.sealing import Sealer

    data = tmp_path / "data"
    catalogue = Catalogue(data)
    call = record_call(catalogue, data, number=NUMBER)
    catalogue.set_notes(call["id"], NOTE, "user:owner")
    catalogue.add_digit(call["id"], 1.0, "4")
    Directory(catalogue).import_checked([Contact(NUMBER, NAME, None, NOTE)], "user:owner", "contacts.csv")
    catalogue.close()
    secret = KeySlots(data).create()
    catalogue = Catalogue(data)
    assert seal_fields(catalogue, Sealer.load(data), batch=1) == 3
    assert seal_fields(catalogue, Sealer.load(data)) == 0            # taken up again: nothing left
    catalogue.checkpoint()
    assert not any(form in (data / "catalogue.db").read_bytes()
                   for form in (NUMBER.encode(), NAME.encode(), NOTE.encode()))
    opener = Opener(secret)
    assert fill_all_tags(catalogue, opener) == 2                     # the call and the contact
    directory = Directory(catalogue, opener=opener)
    assert directory.get(NATIONAL).name == NAME
    [row] = catalogue.calls()
    assert opener.open_field(row["notes"], "notes") == NOTE
    assert [opener.open_field(key, "digit") for _offset, key in catalogue.digits(call["id"])] == ["4"]
    catalogue.close()


def test_the_number_a_sip_trunk_dials_is_sealed_too(trunk):
    data = trunk.folder / "data"
    data.mkdir()
    secret = KeySlots(data).create()
    write_pcap(trunk.folder / "caller.pcap", tone(440.0, 2.0, 0.5), g711.PCMU, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(1000.0, 2.0, 0.5), g711.PCMU, 0x2222)
    trunk.start(transport="tcp", outgoing="off")
    mu_law = {"pt": "0", "codec": "PCMU"}
    call_through(trunk, "uac.xml", "uas.xml", 2000, inbound=False, transport="t1",
                 caller_keys=mu_law, callee_keys=mu_law, service=DIALLED)
    [call] = trunk.calls()
    assert call["state"] == "complete" and Opener(secret).open_field(call["number"], "number") == DIALLED
    assert residue(data) == []
