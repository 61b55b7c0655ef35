"""The web UI through Flask's test client: access control on every route, CSRF, path traversal,
first-run setup, privacy requests, settings, and the API."""

import html
import os
import re
import sqlite3
import zipfile
from pathlib import Path

import pytest

from conftest import PASSWORD, callrec, demo_path, simulated_cards, stop, wait_for

FORM = re.compile(rb'name="csrf_token" value="([^"]+)"')
SAMPLE_ARGS = {"call_id": 1, "job_id": "abc", "name": "shop", "user_id": 1, "token_id": 1, "lang": "fr", "number": "+3225550101",
               "filename": "style.css"}
PUBLIC = {"auth.login", "auth.code", "auth.setup", "auth.language", "static", "healthz", "certificate", "revocation_list",
          "api.openapi", "notice.public", "notice.sheet"}


def csrf(client, url: str = "/login") -> str:
    return FORM.search(client.get(url).data).group(1).decode()


def login(app, name: str, password: str = PASSWORD):
    client = app.test_client()
    response = client.post("/login", data={"csrf_token": csrf(client), "name": name, "password": password})
    assert response.status_code == 302, response.data
    return client


def post(client, url: str, **form):
    return client.post(url, data={"csrf_token": csrf(client, "/"), **form})


def routes(app, **given):
    """Every route with a URL built from sample arguments (or those `given`), its methods and the
    names of its arguments."""
    from flask import url_for

    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if rule.endpoint in PUBLIC:
                continue
            args = {name: given.get(name, SAMPLE_ARGS[name]) for name in rule.arguments}
            yield rule.endpoint, url_for(rule.endpoint, **args), rule.methods - {"HEAD", "OPTIONS"}, rule.arguments


def test_every_route_refuses_an_anonymous_user(web):
    app, _ = web
    client = app.test_client()
    checked = 0
    for endpoint, url, methods, _ in routes(app):
        for method in methods:
            response = client.open(url, method=method)
            if url.startswith("/api/"):
                assert response.status_code == 401, (endpoint, method)
            else:
                # A GET is sent to the login page; a POST without a session has no CSRF token either.
                assert response.status_code in (302, 400), (endpoint, method, response.status_code)
                assert response.status_code == 400 or "/login" in response.location
            checked += 1
    assert checked >= 30


def test_a_staff_member_reaches_nothing_of_a_line_not_theirs(web):
    app, calls = web
    clerk = login(app, "clerk")
    shop_call = calls["supplier"]["id"]
    token = app.extensions["callrec"].accounts.add_token("crm", "staff", ["office"], "test")
    checked = 0
    for endpoint, url, methods, arguments in routes(app, call_id=shop_call):
        if "call_id" not in arguments:
            continue
        for method in methods:
            bearer = {"Authorization": f"Bearer {token}"}
            if method == "GET":
                response = clerk.get(url, headers=bearer)
            elif url.startswith("/api/"):
                response = clerk.open(url, method=method, headers=bearer,
                                      json={"number": "+3225559999", "contact_name": "x", "notes": "x"})
            else:
                response = post(clerk, url, reason="x", confirm="yes", notes="x", purpose="agreement")
            assert response.status_code in (403, 404) and b"OggS" not in response.data, (endpoint, method)
            checked += 1
    assert checked >= 11
    shop = app.extensions["callrec"].catalogue.get_call(shop_call)
    assert shop["held"] == 0 and shop["restricted"] == 0 and shop["number"] == "+3225550101"
    listing = clerk.get("/").data.decode()
    assert "+3225550303" in listing and "+3225550101" not in listing
    status = clerk.get("/status.json").get_json()
    assert [line["name"] for line in status["lines"]] == ["office"]
    for url in ("/privacy", "/settings/", "/settings/users", "/audit", "/audit.csv"):
        assert clerk.get(url).status_code == 403, url
    for url in (f"/calls/{shop_call}/hold", f"/calls/{calls['office']['id']}/delete"):
        assert post(clerk, url, reason="x", confirm="yes").status_code in (403, 404), url
    own = clerk.get(f"/calls/{calls['office']['id']}/audio")
    assert own.status_code == 200 and own.data.startswith(b"OggS")


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(web):
    app, calls = web
    admin = login(app, "admin")
    call_id = calls["customer"]["id"]
    response = admin.post(f"/calls/{call_id}/hold", data={"reason": "dispute"})
    assert response.status_code == 400 and b"reload the page" in response.data
    response = admin.post(f"/calls/{call_id}/hold", data={"reason": "dispute", "csrf_token": "forged"})
    assert response.status_code == 400
    assert app.extensions["callrec"].catalogue.get_call(call_id)["held"] == 0
    assert post(admin, f"/calls/{call_id}/hold", reason="dispute").status_code == 302
    assert app.extensions["callrec"].catalogue.get_call(call_id)["held"] == 1


@pytest.mark.parametrize("url", [
    "/calls/..%2f..%2fcatalogue.db/audio", "/calls/../../etc/passwd/download", "/calls/-1/audio",
    "/calls/1e3/download", "/calls/99999/audio", "/calls/%00/audio", "/calls/1.0/waveform.svg",
    "/api/v1/calls/..%2fcatalogue.db/audio", "/api/v1/calls/abc",
])
def test_malformed_or_traversing_call_ids_get_404_and_read_nothing(web, url):
    app, _ = web
    admin = login(app, "admin")
    token = app.extensions["callrec"].accounts.add_token("crm", "admin", None, "test")
    response = admin.get(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (400, 404)
    assert b"SQLite format" not in response.data and b"root:" not in response.data


def test_a_catalogue_row_pointing_outside_the_archive_is_not_served(web):
    app, calls = web
    call_id = calls["customer"]["id"]
    app.extensions["callrec"].catalogue.update_call(call_id, file="catalogue.db")
    admin = login(app, "admin")
    for url in (f"/calls/{call_id}/audio", f"/calls/{call_id}/download"):
        response = admin.get(url)
        assert response.status_code == 404 and b"SQLite format" not in response.data
    picture = admin.get(f"/calls/{call_id}/waveform.svg")      # drawn from the peaks kept at archiving
    assert picture.data.startswith(b"<svg") and b"SQLite format" not in picture.data


def test_first_run_offers_only_setup_and_needs_the_printed_code(web_appliance):
    from web import create_app

    config, data, _ = web_appliance
    app = create_app(config, secure_cookies=True)
    client = app.test_client()
    assert client.get("/").location.endswith("/setup")
    assert client.get("/login").location.endswith("/setup")
    code = callrec("setup-code", "--config", str(config)).stdout.strip()
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code)
    form = {"csrf_token": csrf(client, "/setup"), "name": "owner", "password": PASSWORD, "confirm": PASSWORD}
    response = client.post("/setup", data={**form, "code": "AAAA-BBBB-CCCC"})
    assert response.status_code == 400 and b"setup code is wrong" in response.data
    assert app.extensions["callrec"].accounts.needs_setup()
    response = client.post("/setup", data={**form, "code": code.lower()})
    assert response.status_code == 302
    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("__Host-callrec_session=")]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie
    assert not app.extensions["callrec"].accounts.needs_setup()
    assert callrec("setup-code", "--config", str(config), check=False).returncode == 1
    assert app.test_client().get("/setup").location.endswith("/login")


def test_pages_carry_security_headers(web):
    app, _ = web
    response = login(app, "admin").get("/")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_the_list_filters_by_number_line_direction_flags_and_search(web):
    app, calls = web
    admin = login(app, "admin")
    page = admin.get("/?number=%2B3225550101").data.decode()
    assert "+3225550101" in page and "+3225550303" not in page
    page = admin.get("/?line=office").data.decode()
    assert "+3225550303" in page and "+3225550101" not in page
    post(admin, f"/calls/{calls['office']['id']}/notes", notes="Ordered 40 boxes of tiles")
    page = admin.get("/?q=tiles").data.decode()
    assert "+3225550303" in page and "+3225550202" not in page
    post(admin, f"/calls/{calls['supplier']['id']}/agreement")
    page = admin.get("/?flag=agreement").data.decode()
    assert "+3225550101" in page and "+3225550303" not in page
    page = admin.get("/?min_s=10").data.decode()
    assert "+3225550101" in page and "+3225550202" not in page
    response = admin.get("/?since=yesterday")
    assert response.status_code == 400 and b"since: not a date" in response.data


def test_a_privacy_request_finds_every_way_the_number_was_written_then_exports_holds_and_erases(web, tmp_path):
    app, calls = web
    admin = login(app, "admin")
    page = admin.get("/privacy?number=%2B32+2+555+02+02").data.decode()
    assert "2 call(s)" in page
    response = post(admin, "/privacy/export", number="+32 2 555 02 02")
    assert response.status_code == 302
    job = response.location.rsplit("/", 1)[1]
    assert wait_for(lambda: admin.get(f"/exports/{job}.json").get_json()["state"] != "running", 10)
    assert admin.get(f"/exports/{job}.json").get_json()["state"] == "ready"
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(admin.get(f"/exports/{job}/bundle").data)
    assert "2 call(s)" in callrec("verify", str(bundle)).stdout
    assert len([n for n in zipfile.ZipFile(bundle).namelist() if n.startswith("recordings/")]) == 2
    post(admin, "/privacy/hold", number="+32 2 555 02 02", reason="restriction request 2026-11")
    catalogue = app.extensions["callrec"].catalogue
    assert all(catalogue.get_call(calls[k]["id"])["held"] for k in ("customer", "customer_again"))
    post(admin, "/privacy/erase", number="+32 2 555 02 02", confirm="wrong")
    assert catalogue.get_call(calls["customer"]["id"])          # not confirmed: nothing erased
    for key in ("customer", "customer_again"):
        post(admin, f"/calls/{calls[key]['id']}/release")
    response = admin.post("/privacy/erase", data={"csrf_token": csrf(admin, "/"), "number": "+32 2 555 02 02",
                                                  "confirm": "+32 2 555 02 02"}, follow_redirects=True)
    assert b"2 call(s) erased" in response.data
    assert [c["number"] for c in catalogue.calls()] == ["+3225550101", "+3225550303"]
    trail = admin.get("/audit.csv").data.decode()
    assert trail.count(",erased,") == 2 and ",export," in trail and "127.0.0.1" in trail


def test_a_restricted_call_is_listed_and_kept_but_played_only_by_an_admin_who_gives_a_reason(web):
    app, calls = web
    backend = app.extensions["callrec"]
    supervisor, clerk, admin = login(app, "super"), login(app, "clerk"), login(app, "admin")
    restricted = calls["customer_again"]["id"]      # on the office line: the clerk's
    assert post(supervisor, "/privacy/restrict", number="+32 2 555 02 02", reason="").status_code == 302
    assert not backend.catalogue.get_call(restricted)["restricted"]              # no reason: nothing done
    post(supervisor, "/privacy/restrict", number="+32 2 555 02 02", reason="Art. 18 request of 2026-12-01")
    assert backend.catalogue.get_call(restricted)["restrict_reason"] == "Art. 18 request of 2026-12-01"
    token = {"Authorization": f"Bearer {backend.accounts.add_token('crm', 'admin', None, 'test')}"}
    for client, url, headers in ((clerk, f"/calls/{restricted}/audio", {}), (supervisor, f"/calls/{restricted}/download", {}),
                                 (admin, f"/calls/{restricted}/audio", {}), (app.test_client(), f"/api/v1/calls/{restricted}/audio", token)):
        response = client.get(url, headers=headers)
        assert response.status_code == 403 and b"OggS" not in response.data, url
        assert b"restricted" in response.data
    assert b"restricted" in clerk.get("/?flag=restricted").data
    assert post(supervisor, "/privacy/export", number="+32 2 555 02 02").status_code == 302
    assert not list(backend.exports_dir.glob("*.zip*"))                       # refused, with a message
    assert post(clerk, f"/calls/{restricted}/open", reason="x").status_code == 403    # staff can't open it
    post(admin, f"/calls/{restricted}/open", reason="")                       # no reason: still closed
    assert admin.get(f"/calls/{restricted}/audio").status_code == 403
    post(admin, f"/calls/{restricted}/open", reason="the customer's lawyer asks for a copy")
    assert admin.get(f"/calls/{restricted}/audio").data.startswith(b"OggS")
    assert clerk.get(f"/calls/{restricted}/audio").status_code == 403           # opened to that admin only
    trail = admin.get("/audit.csv").data.decode()
    assert "open-restricted" in trail and "the customer's lawyer asks for a copy" in trail
    # Kept whatever its retention says, until the restriction is lifted.
    backend.catalogue.update_call(restricted, started_at="2020-01-01T00:00:00.000Z")
    assert backend.store.clean().expired == 0 and backend.catalogue.get_call(restricted)
    assert post(supervisor, f"/calls/{restricted}/lift-restriction").status_code == 403
    post(admin, f"/calls/{restricted}/lift-restriction")
    assert backend.store.clean().expired == 1
    events = [e["event"] for e in backend.catalogue.ledger_of(restricted)[0]]
    assert events[-3:] == ["restricted", "restriction-lifted", "expired"]


def test_the_do_not_record_list_is_kept_from_the_privacy_page_and_the_api_without_numbers(web):
    app, _ = web
    backend = app.extensions["callrec"]
    supervisor, clerk = login(app, "super"), login(app, "clerk")
    assert b"Do not record this number" in supervisor.get("/privacy?number=%2B32+2+555+02+02").data
    assert post(clerk, "/privacy/do-not-record", number="+32 2 555 02 02").status_code == 403
    post(supervisor, "/privacy/do-not-record", number="+32 2 555 02 02", note="R-7")
    page = supervisor.get("/privacy/do-not-record").data.decode()
    assert "…202" in page and "R-7" in page and "555" not in page
    assert b"On the do-not-record list" in supervisor.get("/privacy?number=025550202").data
    assert backend.objections.listed("0032 2 555 02 02")
    bad = supervisor.post("/privacy/do-not-record", data={"csrf_token": csrf(supervisor, "/"), "number": "call me"},
                          follow_redirects=True)
    assert b"not a phone number" in bad.data
    token = {"Authorization": f"Bearer {backend.accounts.add_token('crm', 'supervisor', None, 'test')}"}
    staff = {"Authorization": f"Bearer {backend.accounts.add_token('crm2', 'staff', None, 'test')}"}
    client = app.test_client()
    assert client.post("/api/v1/do-not-record", json={"number": "0475 12 34 56"}, headers=staff).status_code == 403
    assert client.post("/api/v1/do-not-record", json={"number": "0475 12 34 56"}, headers=token).status_code == 201
    assert client.post("/api/v1/do-not-record", json={"number": "+32475123456"}, headers=token).get_json() == {"added": False}
    assert client.post("/api/v1/do-not-record", json={"number": "x"}, headers=token).status_code == 400
    entries = client.get("/api/v1/do-not-record", headers=token).get_json()["entries"]
    assert sorted(e["hint"] for e in entries) == ["…202", "…456"]
    assert client.post("/api/v1/do-not-record/remove", json={"number": "0475123456"}, headers=token).status_code == 200
    assert client.post("/api/v1/do-not-record/remove", json={"number": "0475123456"}, headers=token).status_code == 404
    trail = login(app, "admin").get("/audit.csv").data.decode()
    assert trail.count(",do-not-record,") == 2 and ",record-again," in trail and "475123456" not in trail


def test_a_wrong_number_or_name_is_corrected_and_the_old_one_kept_only_as_a_keyed_hash(web):
    from appliance.store.subjects import subject_hash, subject_key

    app, calls = web
    backend = app.extensions["callrec"]
    supervisor = login(app, "super")
    with backend.catalogue.transaction() as db:
        db.execute("INSERT INTO contacts (number, name, updated_at) VALUES ('+3225550202', 'Jan Pieters', '2026-12-01')")
    backend.catalogue.update_call(calls["customer"]["id"], contact_name="Jan Pieters")
    refused = supervisor.post("/privacy/rectify", data={"csrf_token": csrf(supervisor, "/"), "number": "025550202"},
                              follow_redirects=True)
    assert b"Give the right number" in refused.data
    assert backend.catalogue.get_call(calls["customer"]["id"])["contact_name"] == "Jan Pieters"
    def rectify(**form) -> str:
        return supervisor.post("/privacy/rectify", data={"csrf_token": csrf(supervisor, "/"), **form},
                               follow_redirects=True).data.decode()
    assert "2 call(s) corrected" in rectify(number="025550202", new_name="Jana Pietersová")
    assert "2 call(s) corrected" in rectify(number="025550202", new_number="+32 2 555 09 09")
    for key in ("customer", "customer_again"):
        call = backend.catalogue.get_call(calls[key]["id"])
        assert (call["number"], call["contact_name"]) == ("+3225550909", "Jana Pietersová")
    token = {"Authorization": f"Bearer {backend.accounts.add_token('crm', 'supervisor', None, 'test')}"}
    client = app.test_client()
    assert client.post(f"/api/v1/calls/{calls['office']['id']}/rectify", json={"number": "x"},
                       headers=token).status_code == 400
    answer = client.post(f"/api/v1/calls/{calls['office']['id']}/rectify", json={"contact_name": "Ann"}, headers=token)
    assert answer.get_json()["changed"] == ["contact_name"] and answer.get_json()["call"]["contact_name"] == "Ann"
    key = subject_key(backend.data_dir)
    details = [e["detail"] for e in backend.catalogue.ledger_of(calls["customer"]["id"])[0] if e["event"] == "rectified"]
    assert details == [f"contact_name was {subject_hash(key, 'Jan Pieters')}",
                       f"number was {subject_hash(key, '+3225550202')}"]
    assert backend.catalogue.db.execute("SELECT name FROM contacts").fetchall()[0][0] == "Jana Pietersová"
    backend.catalogue.checkpoint()
    for path in backend.data_dir.glob("catalogue.db*"):
        assert b"Jan Pieters" not in path.read_bytes(), path          # the old name: overwritten
    assert callrec("verify", "--data", str(backend.data_dir)).returncode == 0


def test_a_setting_is_checked_like_the_config_file_and_a_bad_one_changes_nothing(web):
    app, _ = web
    backend = app.extensions["callrec"]
    admin = login(app, "admin")
    before = backend.config_path.read_text()
    response = post(admin, "/settings/purpose", name="training", retention_days="0", legal_basis="x")
    assert response.status_code == 302
    page = admin.get("/settings/").data.decode()
    assert "purpose.training.retention_days" in page and str(backend.config_path) in page
    assert backend.config_path.read_text() == before
    post(admin, "/settings/purpose", name="training", retention_days="14", legal_basis="Training staff")
    assert backend.store.purposes["training"].retention_days == 14
    post(admin, "/settings/line/shop", purpose="agreement", capture="cap1", playback="play1", hook_pin="17",
         hook_active="low", notice_incoming=["off", "on"], optout_digit="9", optout_window_s="10")
    [shop] = [line for line in backend.config.line if line.name == "shop"]
    assert shop.purpose == "agreement" and shop.optout_digit == "9" and shop.notice_incoming is True
    response = post(admin, "/settings/line/shop", capture="cap1", playback="play1", hook_pin="18",
                    hook_active="low")
    assert "GPIO pin 18 is used twice" in admin.get("/settings/").data.decode()


def test_settings_the_authorities_advise_against_are_shown_until_changed(web):
    app, _ = web
    backend = app.extensions["callrec"]
    admin = login(app, "admin")
    lines = [line.name for line in [*backend.config.line, *backend.config.sip_trunk]
             if backend.config.purpose[line.purpose].occasional]
    assert "shop" in lines
    page = html.unescape(admin.get("/settings/").data.decode())
    assert "Line shop records every call for training at all hours" in page
    wiring = {"capture": "cap1", "playback": "play1", "hook_pin": "17", "hook_active": "low"}
    before = backend.config_path.read_text()
    post(admin, "/settings/line/shop", schedule="mon-fri 09:00-12:00\nsat 9-12", **wiring)
    page = html.unescape(admin.get("/settings/").data.decode())
    assert "line[0].schedule: 'sat 9-12': expected days and hours" in page
    assert backend.config_path.read_text() == before
    post(admin, "/settings/line/shop", schedule="mon-fri 09:00-12:00\n\nsat 10:00-12:00", record_one_in="3",
         **wiring)
    [shop] = [line for line in backend.config.line if line.name == "shop"]
    assert shop.schedule == ["mon-fri 09:00-12:00", "sat 10:00-12:00"] and shop.record_one_in == 3
    post(admin, "/settings/purpose", name="training", retention_days="200", legal_basis="Training staff")
    admin.set_cookie("lang", "fr")
    page = html.unescape(admin.get("/status").data.decode())
    assert "Line shop" not in page and "La ligne shop" not in page
    assert "les appels sont conservés 200 jours, plus que les 183 jours recommandés" in page
    assert "Enregistrés : un appel sur 3, seulement mon-fri 09:00-12:00; sat 10:00-12:00" in page


def test_a_setting_saved_keeps_the_technicians_comments_and_changes_only_its_value(web):
    app, _ = web
    path = app.extensions["callrec"].config_path
    commented = "# Installed at the bakery, 2026-11-02\n" + path.read_text().replace(
        "hook_pin = 17", "# the tap's hook output, via the opto-coupler\nhook_pin = 17  # header pin 11", 1)
    path.write_text(commented)
    admin = login(app, "admin")
    post(admin, "/settings/line/shop", purpose="agreement", capture="cap1", playback="play1", hook_pin="17",
         hook_active="low")
    post(admin, "/settings/store", max_archive_mb="2000", min_free_mb="100", min_free_hours="1",
         cleaner_interval_s="60")
    post(admin, "/settings/purpose", name="training", retention_days="14", legal_basis="Training staff")
    saved = path.read_text()
    assert "# Installed at the bakery, 2026-11-02" in saved
    assert "# the tap's hook output, via the opto-coupler\nhook_pin = 17  # header pin 11" in saved
    assert 'purpose = "agreement"' in saved and "max_archive_mb = 2000" in saved
    assert 'legal_basis = "Training staff"' in saved
    assert path.with_name(path.name + ".bak").read_text().startswith("# Installed at the bakery")
    assert app.extensions["callrec"].store.purposes["training"].retention_days == 14


def test_a_refused_action_and_a_missing_page_are_explained_in_the_users_language(web):
    app, calls = web
    admin = login(app, "admin")
    admin.set_cookie("lang", "pl")
    call_id = calls["supplier"]["id"]
    page = admin.post(f"/calls/{call_id}/release", data={"csrf_token": csrf(admin, "/")},
                      follow_redirects=True).get_data(as_text=True)
    assert f"usunięcie rozmowy {call_id} nie jest wstrzymane" in page and "is not on hold" not in page
    admin.set_cookie("lang", "fr")
    for url in ("/no-such-page", "/settings/line/no-such-line"):
        response = admin.get(url) if url == "/no-such-page" else post(admin, url, purpose="training")
        page = html.unescape(response.get_data(as_text=True))
        assert response.status_code == 404 and "Cette page n'existe pas" in page
        assert "requested URL" not in page


def test_a_notice_spoken_from_text_is_made_checked_and_given_to_the_line(web):
    app, _ = web
    backend = app.extensions["callrec"]
    admin = login(app, "admin")
    post(admin, "/settings/notice", source="text", text="Cet appel peut être enregistré.", language="fr",
         lines="office")
    [office] = [line for line in backend.config.line if line.name == "office"]
    assert office.notice.parent == backend.data_dir / "notices" and office.notice.stat().st_size > 10000
    from appliance.notice import load_notice
    assert load_notice(office.notice, 8000).duration_s > 1.0


def test_the_api_lists_calls_of_the_tokens_lines_and_exports_a_bundle_that_verifies(web, tmp_path):
    app, calls = web
    accounts = app.extensions["callrec"].accounts
    office_only = {"Authorization": f"Bearer {accounts.add_token('crm', 'staff', ['office'], 'test')}"}
    client = app.test_client()
    assert client.get("/api/v1/calls").status_code == 401
    assert client.get("/api/v1/calls", headers={"Authorization": "Bearer nope"}).status_code == 401
    listed = client.get("/api/v1/calls", headers=office_only).get_json()
    assert {c["line"] for c in listed["calls"]} == {"office"} and listed["more"] is False
    assert client.get(f"/api/v1/calls/{calls['supplier']['id']}", headers=office_only).status_code == 404
    call = client.get(f"/api/v1/calls/{calls['office']['id']}", headers=office_only).get_json()
    audio = client.get(call["audio_url"], headers=office_only).data
    assert audio == (app.extensions["callrec"].data_dir / calls["office"]["file"]).read_bytes()
    assert client.post("/api/v1/exports", json={"number": "+3225550202"}, headers=office_only).status_code == 403
    office_only = {"Authorization": f"Bearer {accounts.add_token('dpo', 'supervisor', ['office'], 'test')}"}
    started = client.post("/api/v1/exports", json={"number": "+3225550202"}, headers=office_only)
    assert started.status_code == 202
    job = started.get_json()["id"]
    assert wait_for(lambda: client.get(f"/api/v1/exports/{job}", headers=office_only).get_json()["state"] != "running", 10)
    status = client.get(f"/api/v1/exports/{job}", headers=office_only).get_json()
    assert status["state"] == "ready" and status["calls"] == 1      # the shop's call is not theirs
    bundle = tmp_path / "api.zip"
    bundle.write_bytes(client.get(status["bundle_url"], headers=office_only).data)
    assert "1 call(s)" in callrec("verify", str(bundle)).stdout
    response = client.post("/api/v1/exports", json={"call_ids": "all"}, headers=office_only)
    assert response.status_code == 400 and "call_ids" in response.get_json()["error"]


def test_anyone_may_download_the_appliances_authority_to_trust_it(web):
    from web.certificate import CA_NAME, TLS_DIR, ensure_certificate

    app, _ = web
    client = app.test_client()
    assert client.get("/certificate.crt").status_code == 404          # not made before the server's first start
    folder = app.extensions["callrec"].accounts.folder / TLS_DIR
    ensure_certificate(folder, "localhost")
    response = client.get("/certificate.crt")
    assert response.status_code == 200 and response.data == (folder / CA_NAME).read_bytes()
    assert "attachment" in response.headers["Content-Disposition"] and b"PRIVATE" not in response.data
    crl = client.get("/ca.crl")
    assert crl.status_code == 200 and crl.mimetype == "application/pkix-crl"


def test_a_config_named_by_a_relative_path_serves_files_from_its_own_folder(web_appliance, monkeypatch):
    # As `./run-demo` starts it: `callrec web --config callrec-data/appliance.toml`.
    from web import create_app
    from web.certificate import TLS_DIR, ensure_certificate

    config, data, calls = web_appliance
    monkeypatch.chdir(config.parent.parent)
    app = create_app(Path(config.parent.name) / config.name, secure_cookies=False)
    try:
        ensure_certificate(app.extensions["callrec"].accounts.folder / TLS_DIR, "localhost")
        assert app.test_client().get("/certificate.crt").status_code == 200
        app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
        audio = login(app, "admin").get(f"/calls/{calls['office']['id']}/download")
        assert audio.status_code == 200 and audio.data == (data / calls["office"]["file"]).read_bytes()
    finally:
        app.extensions["callrec"].close()


def test_dates_at_the_ends_of_the_calendar_select_every_call_and_a_bad_one_is_named(web):
    app, calls = web
    token = app.extensions["callrec"].accounts.add_token("crm", "admin", None, "test")
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    listed = client.get("/api/v1/calls?since=0001-01-01&until=9999-12-31", headers=headers)
    assert listed.status_code == 200 and len(listed.get_json()["calls"]) == len(calls)
    refused = client.get("/api/v1/calls?until=2026-02-30", headers=headers)
    assert refused.status_code == 400 and "until" in refused.get_json()["error"]


def test_a_setting_saved_in_the_web_ui_reaches_the_running_recorder_without_a_restart(web_appliance, tmp_path):
    """`callrec run` on simulated hardware (mock pins, FIFO-fed ALSA file PCMs) and the web UI on the
    same configuration: a changed retention is taken up by the recorder at once (SIGHUP)."""
    import os
    import subprocess
    import sys
    import time

    from appliance.simulate import capture_pcm, playback_pcm
    from web import create_app

    config, data, calls = web_appliance
    alsa, feeders = simulated_cards(data, ["shop", "office"])
    text = config.read_text()
    for line, card in (("shop", "1"), ("office", "2")):
        text = text.replace(f'capture = "cap{card}"', f'capture = "{capture_pcm(line)}"')
        text = text.replace(f'playback = "play{card}"', f'playback = "{playback_pcm(line)}"')
    config.write_text(text)
    env = {**os.environ, "ALSA_CONFIG_PATH": alsa, "GPIOZERO_PIN_FACTORY": "mock"}
    recorder = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--config", str(config)], env=env,
                                stderr=subprocess.PIPE, text=True)
    try:
        app = create_app(config, secure_cookies=False)
        app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
        admin = login(app, "admin")
        assert wait_for(lambda: admin.get("/status.json").get_json()["recorder_running"], 20)
        status = admin.get("/status.json").get_json()
        assert [(line["name"], line["state"]) for line in status["lines"]] == [("shop", "idle"), ("office", "idle")]
        response = admin.post("/settings/purpose", data={"csrf_token": csrf(admin, "/"), "name": "training",
                                                         "retention_days": "14", "legal_basis": "Training"},
                              follow_redirects=True)
        assert b"Saved and applied" in response.data
    finally:
        time.sleep(1.0)                  # the recorder's loop takes up the signal within half a second
        recorder.terminate()
        log = recorder.communicate(timeout=30)[1]
        stop(feeders)
    assert recorder.returncode == 0, log
    assert "configuration reloaded" in log


def test_a_deleted_users_cookie_does_not_fit_the_next_user_made(web):
    app, _ = web
    accounts = app.extensions["callrec"].accounts
    doomed = accounts.add_user("temp", PASSWORD, "staff", None)
    old = login(app, "temp")
    accounts.delete_user(doomed.id)
    accounts.add_user("boss", PASSWORD, "admin", None)       # may get the same id
    assert old.get("/settings/users").status_code == 302    # sent to the login page


def test_a_session_ends_on_the_appliance_at_logout_or_when_an_admin_ends_it(web):
    app, calls = web
    cookie = app.config["SESSION_COOKIE_NAME"]

    def replay(value: str):
        """Another browser holding a copy of the cookie."""
        thief = app.test_client()
        thief.set_cookie(cookie, value)
        return thief

    clerk = login(app, "clerk")
    copied = clerk.get_cookie(cookie).value
    assert replay(copied).get("/").status_code == 200
    post(clerk, "/logout")
    assert replay(copied).get("/").status_code == 302          # the copy is worth nothing now

    phone, desk, admin = login(app, "clerk"), login(app, "clerk"), login(app, "admin")
    clerk_id = next(u["id"] for u in app.extensions["callrec"].accounts.users() if u["name"] == "clerk")
    page = admin.get("/settings/users").get_data(as_text=True)
    assert "Logged in on 2 device(s)" in page and "127.0.0.1" in page
    from web.settings import device_name
    assert device_name("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/131.0.0.0 Mobile Safari/537.36") == "Chrome / Android"
    assert device_name("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0") == "Edge / Windows"
    # A new role or lines apply at the next request, without logging out.
    assert phone.get(f"/calls/{calls['supplier']['id']}").status_code == 404
    post(admin, f"/settings/users/{clerk_id}", action="change", role="staff", all_lines="1")
    assert phone.get(f"/calls/{calls['supplier']['id']}").status_code == 200
    post(admin, f"/settings/users/{clerk_id}", action="end_sessions")     # the phone was lost
    assert phone.get("/").status_code == 302 and desk.get("/").status_code == 302
    assert "sessions of clerk ended" in admin.get("/audit.csv").get_data(as_text=True)
    # An admin's new password ends their other sessions, not the one that changed it.
    other_admin = login(app, "admin")
    admin_id = next(u["id"] for u in app.extensions["callrec"].accounts.users() if u["name"] == "admin")
    post(admin, f"/settings/users/{admin_id}", action="password", password="a new long password")
    assert other_admin.get("/").status_code == 302 and admin.get("/").status_code == 200


def test_login_without_the_forms_token_is_refused(web):
    app, _ = web
    response = app.test_client().post("/login", data={"name": "admin", "password": PASSWORD})
    assert response.status_code == 400 and b"reload the page" in response.data


def test_live_status_streams_are_limited_and_the_others_are_told_to_poll(web):
    app, _ = web
    admin = login(app, "admin")
    streams = [admin.get("/status/events", buffered=False) for _ in range(4)]     # [web] threads = 8: 4 stream
    assert [r.status_code for r in streams] == [200] * 4
    assert admin.get("/status/events", buffered=False).status_code == 503
    streams.pop().close()               # a page closed: its place is free
    streams.append(admin.get("/status/events", buffered=False))
    assert streams[-1].status_code == 200 and next(streams[-1].response).startswith(b"data: ")
    while streams:
        streams.pop().close()


def test_every_listen_is_audited_whatever_range_the_player_asks_for_first(web):
    app, calls = web
    clerk = login(app, "clerk")
    call_id = calls["office"]["id"]
    assert clerk.get(f"/calls/{call_id}/audio", headers={"Range": "bytes=1-"}).status_code == 206
    clerk.get(f"/calls/{call_id}/audio", headers={"Range": "bytes=500-"})      # a seek: the same listen
    with app.extensions["callrec"].catalogue.transaction() as db:
        listens = db.execute("SELECT actor FROM audit WHERE action = 'listen' AND call_id = ?", [call_id]).fetchall()
    assert [row[0] for row in listens] == ["user:clerk"]


def test_an_export_that_would_eat_the_recording_reserve_is_refused(web_appliance):
    from web import create_app

    config, _, calls = web_appliance
    config.write_text(config.read_text() + "\n[store]\nmin_free_mb = 100000000\n")
    app = create_app(config, secure_cookies=False)
    app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
    admin = login(app, "admin")
    response = admin.post("/privacy/export", data={"csrf_token": csrf(admin, "/"), "number": "+3225550101"},
                          follow_redirects=True)
    assert b"free above what the appliance keeps for recording" in response.data
    assert not list((app.extensions["callrec"].exports_dir).iterdir())
    app.extensions["callrec"].close()


def test_an_erased_call_takes_the_bundles_holding_it_with_it(web):
    app, calls = web
    admin = login(app, "admin")
    job = post(admin, "/privacy/export", number="+3225550101").location.rsplit("/", 1)[1]
    assert wait_for(lambda: admin.get(f"/exports/{job}.json").get_json()["state"] == "ready", 10)
    post(admin, f"/calls/{calls['supplier']['id']}/delete", confirm="yes")
    assert admin.get(f"/exports/{job}/bundle").status_code == 404
    assert not list(app.extensions["callrec"].exports_dir.iterdir())


def test_a_bundle_is_refused_to_its_owner_once_demoted_or_moved_off_its_lines(web):
    app, calls = web
    accounts = app.extensions["callrec"].accounts
    super_id = next(u["id"] for u in accounts.users() if u["name"] == "super")
    supervisor = login(app, "super")
    job = post(supervisor, "/privacy/export", number="+3225550101").location.rsplit("/", 1)[1]
    assert wait_for(lambda: supervisor.get(f"/exports/{job}.json").get_json()["state"] == "ready", 10)
    assert supervisor.get(f"/exports/{job}/bundle").status_code == 200
    accounts.update_user(super_id, lines=["office"])          # the supplier's call was on the shop line
    assert supervisor.get(f"/exports/{job}/bundle").status_code == 404
    accounts.update_user(super_id, lines=None, role="staff")
    assert supervisor.get(f"/exports/{job}/bundle").status_code == 404
    assert supervisor.get(f"/exports/{job}.json").status_code == 404
    accounts.update_user(super_id, role="supervisor")
    assert supervisor.get(f"/exports/{job}/bundle").status_code == 200


def test_a_bundle_being_written_counts_against_the_room_of_the_next(web_appliance):
    import shutil

    from web import create_app

    config, data, calls = web_appliance
    size = 300 * 1_000_000
    with open(data / calls["supplier"]["file"], "wb") as out:     # a long call: its bundle takes a while
        for _ in range(size // 1_000_000):
            out.write(os.urandom(1_000_000))
    with sqlite3.connect(data / "catalogue.db") as db:
        db.execute("UPDATE calls SET size_bytes = ? WHERE id = ?", [size, calls["supplier"]["id"]])
    # Room above the floor for one such bundle and a half.
    floor_mb = (shutil.disk_usage(data).free - 1.5 * size) / 1e6
    config.write_text(config.read_text() + f"\n[store]\nmin_free_mb = {int(floor_mb)}\nmin_free_hours = 0\n")
    app = create_app(config, secure_cookies=False)
    try:
        for name in ("admin", "boss"):
            app.extensions["callrec"].accounts.add_user(name, PASSWORD, "admin", None)
        first, second = login(app, "admin"), login(app, "boss")
        job = post(first, "/privacy/export", number="+3225550101").location.rsplit("/", 1)[1]
        refused = second.post("/privacy/export", data={"csrf_token": csrf(second, "/"), "number": "+3225550101"},
                              follow_redirects=True)
        assert first.get(f"/exports/{job}.json").get_json()["state"] == "running"
        assert b"free above what the appliance keeps for recording" in refused.data
        assert wait_for(lambda: first.get(f"/exports/{job}.json").get_json()["state"] == "ready", 60)
    finally:
        app.extensions["callrec"].close()


def test_odd_queries_get_a_page_or_a_clear_error_never_a_server_error(web):
    app, _ = web
    admin = login(app, "admin")
    for url in ("/?until=9999-12-31", "/?since=0001-01-01", "/?page=1000000000000000000000", "/?_anchor=x&page=2", "/?endpoint=x&page=2", "/audit?_method=x&page=2"):
        assert admin.get(url).status_code == 200, url


def test_the_audit_csv_keeps_typed_text_from_becoming_a_spreadsheet_formula(web):
    app, calls = web
    admin = login(app, "admin")
    post(admin, f"/calls/{calls['office']['id']}/hold", reason='=HYPERLINK("http://evil/","x")')
    assert "'=HYPERLINK" in admin.get("/audit.csv").data.decode()
    response = post(admin, f"/calls/{calls['office']['id']}/release")
    response = admin.post(f"/calls/{calls['office']['id']}/hold", data={"csrf_token": csrf(admin, "/"), "reason": "x" * 501},
                          follow_redirects=True)
    assert b"at most 500 characters" in response.data


def test_the_waveform_shows_where_the_call_is_loud_and_where_it_is_silent(tmp_path):
    import numpy as np

    from appliance.store.peaks import PeakFolder
    from conftest import tone, write_wav
    from web.waveform import decode_peaks

    audio = np.concatenate([tone(440, 2, 0.5), np.zeros(16000), tone(440, 2, 0.1)])
    pcm = (audio * 32767).astype("<i2").tobytes()
    folder = PeakFolder(len(audio))
    for start in range(0, len(pcm), 3202):          # chunks that end mid-column
        folder.add(pcm[start:start + 3202])
    folded = [level / 255 for level in folder.result()]
    decoded = decode_peaks(write_wav(tmp_path / "call.wav", audio), 6.0)
    for columns in (folded, decoded):
        assert len(columns) == 600
        assert min(columns[:190]) > 0.45 and max(columns[210:390]) == 0 and 0.08 < min(columns[410:]) < 0.12


def test_a_waveform_is_drawn_from_the_peaks_kept_at_archiving_without_decoding(web):
    app, calls = web
    admin = login(app, "admin")
    call = calls["supplier"]
    catalogue = app.extensions["callrec"].catalogue
    assert len(catalogue.peaks_of(call["id"])) == 600
    data = app.extensions["callrec"].data_dir
    (data / call["file"]).write_bytes(b"not audio any more")     # a decode would fail now
    picture = admin.get(f"/calls/{call['id']}/waveform.svg")
    assert picture.status_code == 200 and picture.data.count(b"M") > 500
    # A call archived before peaks were kept is decoded once, and kept.
    with sqlite3.connect(data / "catalogue.db") as db:
        db.execute("DELETE FROM peaks WHERE call_id = ?", [calls["office"]["id"]])
    assert admin.get(f"/calls/{calls['office']['id']}/waveform.svg").status_code == 200
    assert len(catalogue.peaks_of(calls["office"]["id"])) == 600
    # Erased with its call.
    post(admin, f"/calls/{calls['office']['id']}/delete", confirm="yes")
    assert catalogue.peaks_of(calls["office"]["id"]) is None


def test_a_sip_trunks_call_rules_and_notice_are_set_in_the_settings_and_it_is_a_line_like_the_others(web_appliance):
    from web import create_app

    config, _, _ = web_appliance
    config.write_text(config.read_text() + f"""
[[sip_trunk]]
name = "sip1"
notice = "{demo_path('notice-en.wav')}"
notice_outgoing = true

[sip_trunk.trunk]
listen = "127.0.0.1:15060"
peer = "192.0.2.1:5060"

[sip_trunk.pbx]
listen = "127.0.0.1:15062"
""")
    app = create_app(config, secure_cookies=False)
    backend = app.extensions["callrec"]
    backend.accounts.add_user("admin", PASSWORD, "admin", None)
    admin = login(app, "admin")
    settings = admin.get("/settings/").data.decode()
    assert "sip1" in settings and '<option value="announce" selected>' in settings    # notice_outgoing = true, as it reads
    status = admin.get("/status").data.decode()
    assert 'data-outgoing="announce"' in status and 'class="outgoing flash error"' not in status
    post(admin, "/settings/trunk/sip1", purpose="agreement", notice_incoming=["off", "on"],
         outgoing="off", beep_interval_s="20", record_from="notice_end", optout_digit="9", optout_window_s="10",
         pause_max_s="120", rtp_timeout_s="20", keep_declined_number=["off"])
    [trunk] = backend.config.sip_trunk
    assert (trunk.purpose, trunk.outgoing, trunk.record_from, trunk.optout_digit, trunk.rtp_timeout_s) == \
        ("agreement", "off", "notice_end", "9", 20.0)
    assert "notice_outgoing" not in config.read_text()           # the new key replaced the old one
    # The shop's choice not to tell the called party is flagged on the status page, for that trunk only.
    status = admin.get("/status").data.decode()
    assert '<p class="outgoing flash error" data-outgoing="off">Outgoing calls: nothing' in status
    assert status.count('data-outgoing="announce"') == 2
    assert admin.get("/status.json").get_json()["lines"][2]["outgoing"] == "off"
    assert trunk.trunk.peer == "192.0.2.1:5060"                  # the addresses are kept as written
    post(admin, "/settings/notice", source="text", text="Dit gesprek kan worden opgenomen.", language="nl",
         lines="sip1")
    assert backend.config.sip_trunk[0].notice.parent == backend.data_dir / "notices"
    assert [line["name"] for line in admin.get("/status.json").get_json()["lines"]] == ["shop", "office", "sip1"]
    assert "<option>sip1</option>" in admin.get("/").data.decode()      # a line to filter calls by
    backend.close()


def test_the_technician_resets_a_slowed_down_admins_password_from_the_command_line(web):
    app, _ = web
    config = str(app.extensions["callrec"].config_path)
    client = app.test_client()
    for _ in range(8):
        client.post("/login", data={"csrf_token": csrf(client), "name": "admin", "password": "forgotten"})
    assert "admin" in callrec("user", "list", "--config", config).stdout.split("SLOWED")[0]
    new = "a brand new passphrase"
    done = callrec("user", "password", "admin", "--config", config, input=f"{new}\n{new}\n")
    assert "admin: password set" in done.stdout
    login(app, "admin", new)
    refused = callrec("user", "password", "ghost", "--config", config, check=False)
    assert refused.returncode == 2 and "there is no user 'ghost': add --role" in refused.stderr
    callrec("user", "password", "owner2", "--role", "admin", "--config", config, input=f"{new}\n{new}\n")
    login(app, "owner2", new)
