"""Contacts in the web UI and the API, changes to calls through the API, and bulk exports of the
calls list's filter: checked, audited, refused without changing anything."""

import csv
import io
import sqlite3
import zipfile

from conftest import PASSWORD, callrec, wait_for
from test_web import csrf, login, post


def _contacts(data_dir) -> list[tuple]:
    with sqlite3.connect(f"file:{data_dir / 'catalogue.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT number, name, company, note FROM contacts ORDER BY number").fetchall()


def _audit(app, action: str) -> list[dict]:
    from appliance.store.catalogue import AuditFilter

    return app.extensions["callrec"].catalogue.audit_entries(AuditFilter(action=action), 100)


def _bearer(app, role: str, lines=None, name: str = "crm") -> dict:
    token = app.extensions["callrec"].accounts.add_token(name, role, lines, "test")
    return {"Authorization": f"Bearer {token}"}


def test_a_supervisor_adds_edits_exports_and_deletes_contacts_on_the_page(web):
    app, _ = web
    data_dir = app.extensions["callrec"].data_dir
    boss = login(app, "super")
    assert b"/contacts" in boss.get("/").data          # in the navigation
    response = post(boss, "/contacts/add", number="02 555 01 01", name="Dupont SA", company="", note="supplier")
    assert response.status_code == 302
    assert _contacts(data_dir) == [("+3225550101", "Dupont SA", None, "supplier")]
    page = boss.get("/contacts").data.decode()
    assert "Dupont SA" in page and "Contact added." in page

    # A bad number and a number already taken are refused with a message, and change nothing.
    post(boss, "/contacts/add", number="02-abc", name="Nobody")
    assert "is not a phone number" in boss.get("/contacts").data.decode()
    post(boss, "/contacts/add", number="+32 2 555 01 01", name="Twice")
    assert "is Dupont SA&#39;s already" in boss.get("/contacts").data.decode()
    post(boss, "/contacts/add", number="0477 12 34 56", name="Marie")
    post(boss, "/contacts/edit", old_number="+32477123456", number="+3225550101", name="Marie")
    assert "already" in boss.get("/contacts").data.decode()
    assert _contacts(data_dir) == [("+3225550101", "Dupont SA", None, "supplier"), ("+32477123456", "Marie", None, None)]

    post(boss, "/contacts/edit", old_number="+3225550101", number="025550102", name="Dupont & fils",
         company="=HYPERLINK(\"x\")", note="")
    assert ("+3225550102", "Dupont & fils", "=HYPERLINK(\"x\")", None) in _contacts(data_dir)

    # The export is what `callrec contacts import` reads; a formula-like cell is made inert.
    exported = boss.get("/contacts.csv")
    assert exported.status_code == 200 and exported.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(exported.data.decode())))
    assert rows[0] == ["number", "name", "company", "note"]
    assert ["+3225550102", "Dupont & fils", "'=HYPERLINK(\"x\")", ""] in rows

    post(boss, "/contacts/delete", number="+32 477 12 34 56")
    assert [c[0] for c in _contacts(data_dir)] == ["+3225550102"]
    actions = [(e["action"], e["detail"]) for e in _audit(app, "contact-add") + _audit(app, "contact-edit")
               + _audit(app, "contact-delete") + _audit(app, "contact-export")]
    assert ("contact-add", "+3225550101") in actions and ("contact-edit", "+3225550101 -> +3225550102") in actions
    assert ("contact-delete", "+32477123456") in actions and ("contact-export", "2 contact(s)") in actions
    assert all(e["actor"] == "user:super" for e in _audit(app, "contact-add"))


def test_a_csv_upload_is_checked_like_the_command_line_import(web, tmp_path):
    app, _ = web
    data_dir = app.extensions["callrec"].data_dir
    boss = login(app, "admin")

    def upload(text: str):
        return boss.post("/contacts/import", data={"csrf_token": csrf(boss, "/contacts"),
                                                   "file": (io.BytesIO(text.encode()), "shop.csv")})
    upload("number;name\n02 555 01 01;Dupont\nnot a number;Bad\n025550101;Again\n")
    page = boss.get("/contacts").data.decode()
    assert "shop.csv: nothing imported, 2 bad rows" in page and "line 3" in page and "line 4" in page
    assert _contacts(data_dir) == []
    upload("number,name,company\n02 555 01 01,Dupont,Dupont SA\n+32477123456,Marie,\n")
    assert "2 added, 0 updated." in boss.get("/contacts").data.decode()
    assert len(_contacts(data_dir)) == 2 and _audit(app, "contact-import")[0]["detail"] == "shop.csv: 2 added, 0 updated"
    # What the page exports, the command line imports again unchanged.
    exported = tmp_path / "contacts.csv"
    exported.write_bytes(boss.get("/contacts.csv").data)
    from appliance.contacts import read_csv
    assert sorted((c.number, c.name, c.company, c.note) for c in read_csv(exported)) == _contacts(data_dir)
    config = str(app.extensions["callrec"].config_path)
    assert "0 added, 0 updated" in callrec("contacts", "import", str(exported), "--config", config).stdout
    assert [e["actor"][:4] for e in _audit(app, "contact-import")] == ["cli:", "user"]


def test_staff_read_the_contacts_and_change_nothing(web):
    app, _ = web
    data_dir = app.extensions["callrec"].data_dir
    post(login(app, "admin"), "/contacts/add", number="025550101", name="Dupont")
    clerk = login(app, "clerk")
    page = clerk.get("/contacts").data.decode()
    assert "Dupont" in page and "/contacts/add" not in page
    for url in ("/contacts/add", "/contacts/edit", "/contacts/delete"):
        assert post(clerk, url, old_number="025550101", number="025550101", name="X").status_code == 403
    assert clerk.get("/contacts.csv").status_code == 403
    client = login(app, "super")
    assert client.post("/contacts/add", data={"number": "025550199", "name": "X"}).status_code == 400
    assert _contacts(data_dir) == [("+3225550101", "Dupont", None, None)]


def test_the_api_manages_contacts_and_refuses_bad_input_without_a_change(web):
    app, _ = web
    data_dir = app.extensions["callrec"].data_dir
    client, boss, staff = app.test_client(), _bearer(app, "supervisor"), _bearer(app, "staff", None, "reader")
    created = client.post("/api/v1/contacts", json={"number": "02 555 01 01", "name": "Dupont"}, headers=boss)
    assert created.status_code == 201
    assert created.get_json() == {"number": "+3225550101", "name": "Dupont", "company": None, "note": None,
                                  "url": "/api/v1/contacts/+3225550101"}
    assert client.get("/api/v1/contacts/0032 2 555 01 01", headers=staff).get_json()["name"] == "Dupont"
    assert [c["name"] for c in client.get("/api/v1/contacts", headers=staff).get_json()["contacts"]] == ["Dupont"]

    refused = [
        (client.post("/api/v1/contacts", json={"number": "+32 2 555 01 01", "name": "Twice"}, headers=boss), 409,
         "Dupont's already"),
        (client.post("/api/v1/contacts", json={"number": "12ab", "name": "X"}, headers=boss), 400, "not a phone number"),
        (client.post("/api/v1/contacts", json={"number": "025550102", "name": "  "}, headers=boss), 400, "name"),
        (client.post("/api/v1/contacts", json={"number": "025550102"}, headers=boss), 400, "name"),
        (client.post("/api/v1/contacts", json={"number": "025550102", "name": "X", "x": 1}, headers=boss), 400, ""),
        (client.post("/api/v1/contacts", json={"number": "025550102", "name": "X"}, headers=staff), 403, "supervisor"),
        (client.patch("/api/v1/contacts/+3225550101", json={"number": "nope"}, headers=boss), 400, "not a phone"),
        (client.patch("/api/v1/contacts/+3225550101", json={"name": 5}, headers=boss), 400, "name"),
        (client.patch("/api/v1/contacts/+3225550101", json={"name": "Y"}, headers=staff), 403, "supervisor"),
        (client.patch("/api/v1/contacts/+3225550199", json={"name": "Y"}, headers=boss), 404, "no contact"),
        (client.delete("/api/v1/contacts/+3225550101", headers=staff), 403, "supervisor"),
        (client.get("/api/v1/contacts.csv", headers=staff), 403, "supervisor"),
    ]
    for response, status, text in refused:
        assert response.status_code == status and text in response.get_json()["error"], response.get_json()
    assert _contacts(data_dir) == [("+3225550101", "Dupont", None, None)]

    client.post("/api/v1/contacts", json={"number": "0477123456", "name": "Marie"}, headers=boss)
    taken = client.patch("/api/v1/contacts/0477123456", json={"number": "025550101"}, headers=boss)
    assert taken.status_code == 409
    changed = client.patch("/api/v1/contacts/+3225550101", json={"company": "Dupont SA", "number": "025550102"},
                           headers=boss)
    assert changed.status_code == 200 and changed.get_json()["number"] == "+3225550102"
    assert client.get("/api/v1/contacts/+3225550101", headers=boss).status_code == 404
    assert "+3225550102,Dupont,Dupont SA," in client.get("/api/v1/contacts.csv", headers=boss).data.decode()
    assert client.delete("/api/v1/contacts/0477 12 34 56", headers=boss).get_json() == {"deleted": True}
    assert _contacts(data_dir) == [("+3225550102", "Dupont", "Dupont SA", None)]
    assert [e["actor"] for e in _audit(app, "contact-edit")] == ["token:crm"]


def test_erasing_a_customer_removes_their_contact_and_its_audit_traces(web):
    app, _ = web
    data_dir = app.extensions["callrec"].data_dir
    client, boss = app.test_client(), _bearer(app, "admin")
    client.post("/api/v1/contacts", json={"number": "02 555 02 02", "name": "Jeanne Martin"}, headers=boss)
    client.post("/api/v1/contacts", json={"number": "02 555 01 01", "name": "Dupont"}, headers=boss)
    admin = login(app, "admin")
    post(admin, "/confirm", password=PASSWORD)          # an erasure asks for the password again
    assert post(admin, "/privacy/erase", number="025550202", confirm="025550202").status_code == 302
    assert _contacts(data_dir) == [("+3225550101", "Dupont", None, None)]
    details = " ".join(e["detail"] or "" for e in _audit(app, "contact-add"))
    assert "+3225550202" not in details and "[erased:" in details and "+3225550101" in details


def test_the_api_sets_notes_purpose_and_holds_as_the_call_page_does(web):
    app, calls = web
    catalogue = app.extensions["callrec"].catalogue
    client, boss = app.test_client(), _bearer(app, "supervisor", ["shop"])
    call = calls["customer"]["id"]
    office_call = calls["office"]["id"]

    assert client.put(f"/api/v1/calls/{call}/notes", json={"notes": " disputed invoice "}, headers=boss).status_code == 200
    assert catalogue.get_call(call)["notes"] == "disputed invoice"
    answer = client.put(f"/api/v1/calls/{call}/purpose", json={"purpose": "agreement"}, headers=boss)
    assert answer.status_code == 200 and answer.get_json()["call"]["purpose"] == "agreement"
    assert client.post(f"/api/v1/calls/{call}/hold", json={"reason": "claim 42"}, headers=boss).status_code == 200
    assert catalogue.get_call(call)["held"] == 1 and catalogue.get_call(call)["hold_reason"] == "claim 42"
    assert client.post(f"/api/v1/calls/{call}/release", json={}, headers=boss).get_json()["call"]["held"] == 0
    trail = {e["action"]: e for e in _audit(app, None) if e["call_id"] == call}
    assert {"notes", "reclassify", "hold", "release"} <= set(trail)
    assert trail["hold"]["actor"] == "token:crm" and trail["hold"]["detail"] == "claim 42"

    before = catalogue.get_call(call)
    refused = [
        (client.put(f"/api/v1/calls/{call}/notes", json={"notes": "x" * 4001}, headers=boss), 400, "4000"),
        (client.put(f"/api/v1/calls/{call}/notes", json={"text": "x"}, headers=boss), 400, "notes"),
        (client.put(f"/api/v1/calls/{call}/purpose", json={"purpose": "forever"}, headers=boss), 400, "unknown purpose"),
        (client.post(f"/api/v1/calls/{call}/hold", json={"reason": " "}, headers=boss), 400, "reason"),
        (client.post(f"/api/v1/calls/{call}/hold", data="reason", headers=boss), 400, "JSON"),
        (client.post(f"/api/v1/calls/{call}/release", json={}, headers=boss), 409, "not on hold"),
        (client.put(f"/api/v1/calls/{call}/notes", json={"notes": "x"}, headers=_bearer(app, "staff", None, "s")),
         403, "supervisor"),
    ]
    for response, status, text in refused:
        assert response.status_code == status and text in response.get_json()["error"], response.get_json()
    assert catalogue.get_call(call) == before
    # A call on a line the token does not have: as if it did not exist, and untouched.
    office_before = catalogue.get_call(office_call)
    for response in (client.put(f"/api/v1/calls/{office_call}/notes", json={"notes": "x"}, headers=boss),
                     client.post(f"/api/v1/calls/{office_call}/hold", json={"reason": "x"}, headers=boss),
                     client.put(f"/api/v1/calls/{office_call}/purpose", json={"purpose": "agreement"}, headers=boss)):
        assert response.status_code == 404
    assert catalogue.get_call(office_call) == office_before


def test_a_bulk_export_of_a_filter_holds_exactly_its_calls_and_is_checked_on_every_fetch(web, tmp_path):
    from appliance.keys import fingerprint, load_private_key, public_key_hex

    app, calls = web
    backend = app.extensions["callrec"]
    client, boss = app.test_client(), _bearer(app, "supervisor")
    key = fingerprint(public_key_hex(load_private_key(backend.data_dir)))
    bad = client.post("/api/v1/exports", json={"filter": {"since": "yesterday"}}, headers=boss)
    assert bad.status_code == 400 and "since" in bad.get_json()["error"]
    assert client.post("/api/v1/exports", json={"filter": {"colour": "red"}}, headers=boss).status_code == 400
    assert client.post("/api/v1/exports", json={"filter": {"line": "nowhere"}}, headers=boss).status_code == 404
    # A restricted call in the selection: refused as its own export is, and nothing is started.
    backend.store.restrict(calls["supplier"]["id"], "customer's request", "test")
    refused = client.post("/api/v1/exports", json={"filter": {"line": "shop"}}, headers=boss)
    assert refused.status_code == 409 and "restricted" in refused.get_json()["error"]

    started = client.post("/api/v1/exports", json={"filter": {"line": "office", "min_s": 2.5}}, headers=boss)
    assert started.status_code == 202
    job = started.get_json()
    wanted = {calls["customer_again"]["id"], calls["office"]["id"]}
    assert job["calls"] == 2 and job["size"] == sum(calls[n]["size_bytes"] for n in ("customer_again", "office"))
    assert wait_for(lambda: client.get(job["status_url"], headers=boss).get_json()["state"] != "running", 10)
    status = client.get(job["status_url"], headers=boss).get_json()
    assert status["state"] == "ready" and status["done"] == 2 and status["written"] == status["size"]
    bundle = tmp_path / "office.zip"
    bundle.write_bytes(client.get(status["bundle_url"], headers=boss).data)
    assert "2 call(s)" in callrec("verify", str(bundle), "--key", key).stdout
    assert callrec("verify", str(bundle), "--key", "0000:" + key[5:], check=False).returncode == 1
    import json
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    assert {c["id"] for c in manifest["calls"]} == wanted



def test_a_bulk_export_from_the_page_shows_its_size_and_follows_the_users_lines(web):
    app, calls = web
    accounts = app.extensions["callrec"].accounts
    boss = login(app, "super")
    assert b'id="export-selection"' in boss.get("/?line=office").data
    assert b'id="export-selection"' not in login(app, "clerk").get("/?line=office").data
    page = boss.get("/export?line=office&number=025550202").data.decode()
    size = calls["customer_again"]["size_bytes"]
    assert f"1 recording(s), {size / 1e3:.0f} kB in all." in page
    assert 'name="line" value="office"' in page and 'name="number" value="025550202"' in page
    assert login(app, "clerk").get("/export?line=office").status_code == 403
    assert boss.get("/export?since=never").status_code == 400
    started = post(boss, "/export", line="office", number="025550202")
    assert started.status_code == 302 and "/exports/" in started.location
    status_url = started.location + ".json"
    assert wait_for(lambda: boss.get(status_url).get_json()["state"] != "running", 10)
    assert boss.get(status_url).get_json()["calls"] == 1
    assert boss.get(started.location + "/bundle").status_code == 200
    # The user loses the office line: the bundle is no longer theirs to follow or fetch.
    user = next(u for u in accounts.users() if u["name"] == "super")
    accounts.update_user(user["id"], lines=["shop"])
    assert boss.get(started.location + "/bundle").status_code == 404
    assert boss.get(status_url).status_code == 404
