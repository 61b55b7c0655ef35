"""What the shop tells the people it records (GDPR Art. 13 and 15): the legal basis and end of
retention stored with each call when it is recorded and kept through later changes of the
settings, the signed bundle's manifest and access report, the privacy notice and the sheets in
the four languages, and the settings' warnings of what the information lacks."""

import json
import re
import shutil
import time
import zipfile
from datetime import datetime, timedelta

import pytest

from appliance.clock import iso_utc
from appliance.config import DEFAULT_PURPOSES, PurposeConfig, StoreConfig
from appliance.store.catalogue import Catalogue
from appliance.store.retention import Store
from conftest import PASSWORD, callrec, calls_json, demo_path, tone, write_config, write_scenario, write_wav
from test_web import login, post

FIRST_BASIS = "Training our staff: legitimate interest (GDPR Art. 6(1)(f))"
PRIVACY = {"controller": "Boulangerie Martin SRL", "address": "Rue Haute 12\n1000 Bruxelles",
           "email": "privacy@martin.example", "phone": "+32 2 555 00 00", "dpo": "Anne Dupont, dpo@martin.example"}
# What each language must say in the documents (the rights' and sections' headings).
WORDS = {"en": ("Your rights", "Erasure", "Supervisory authority"),
         "fr": ("Vos droits", "Effacement", "Autorité de contrôle"),
         "nl": ("Uw rechten", "Wissing", "Toezichthoudende autoriteit"),
         "pl": ("Twoje prawa", "Usunięcie", "Organ nadzorczy")}


def _toml_table(name: str, values: dict) -> str:
    return f"\n[{name}]\n" + "".join(f"{key} = {json.dumps(value, ensure_ascii=False)}\n" for key, value in values.items())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One call recorded by the real recorder under a training purpose of 30 days and its first
    legal basis; then the settings change both. Yields (config, data, call)."""
    folder = tmp_path_factory.mktemp("recorded")
    config = write_config(folder, recorder={"ring_gap_s": 3.0})
    config.write_text(config.read_text() + _toml_table("purpose.training", {"retention_days": 30, "legal_basis": FIRST_BASIS})
                      + _toml_table("privacy", PRIVACY))
    voice = str(write_wav(folder / "voice.wav", tone(700, 3.0, 0.3)))
    scenario = write_scenario(folder, [{"direction": "incoming", "at": 0.5, "rings": 2, "caller_id": "+3225550202",
                                        "audio": voice}], ring_on_s=0.8, ring_off_s=1.2)
    data = folder / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    [call] = [c for c in calls_json(data) if c["file"]]
    text = config.read_text().replace(FIRST_BASIS, "Changed later").replace("retention_days = 30", "retention_days = 400")
    config.write_text(text)
    return config, data, call


def test_the_legal_basis_and_retention_stored_when_recorded_survive_a_later_change_of_the_settings(recorded, tmp_path):
    config, data, call = recorded
    assert callrec("verify", "--data", str(data), check=False).returncode == 0
    # The cleaner below must not empty the module's data folder: a copy.
    data = shutil.copytree(data, tmp_path / "data", ignore=shutil.ignore_patterns("simulation"))
    started = datetime.fromisoformat(call["started_at"].replace("Z", "+00:00"))
    assert call["legal_basis"] == FIRST_BASIS
    assert call["retention_end"] == iso_utc((started + timedelta(days=30)).timestamp())
    assert calls_json(data)[0]["legal_basis"] == FIRST_BASIS        # as the settings said then, not now
    catalogue = Catalogue(data)
    try:
        [recorded_entry] = [e for e in catalogue.ledger_of(call["id"])[0] if e["event"] == "recorded"]
        assert json.loads(recorded_entry["detail"]) == {"state": "complete", "purpose": "training",
                                                        "legal_basis": FIRST_BASIS, "retention_end": call["retention_end"]}
        # A longer retention since: the call still goes at the end it was recorded with.
        store = Store(catalogue, data, {**DEFAULT_PURPOSES, "training": PurposeConfig(retention_days=400, legal_basis="x")},
                      StoreConfig(min_free_mb=0, min_free_hours=0))
        assert store.expires_at(catalogue.get_call(call["id"])) == call["retention_end"]
        assert store.clean(now=started.timestamp() + 29 * 86400).expired == 0
        assert store.clean(now=started.timestamp() + 31 * 86400).expired == 1
    finally:
        catalogue.close()


def test_a_shorter_retention_since_applies_and_reclassifying_stores_the_new_facts(tmp_path):
    catalogue = Catalogue(tmp_path)
    store = Store(catalogue, tmp_path, DEFAULT_PURPOSES, StoreConfig(min_free_mb=0, min_free_hours=0))
    started = iso_utc(time.time() - 20 * 86400)
    call_id = catalogue.add_call(line="t1", direction="incoming", started_at=started, purpose="training", state="missed",
                                 **store.legal_facts("training", started))
    assert catalogue.get_call(call_id)["retention_end"] == iso_utc(datetime.fromisoformat(
        started.replace("Z", "+00:00")).timestamp() + 30 * 86400)
    store.classify(call_id, "agreement", "admin")
    row = catalogue.get_call(call_id)
    assert row["legal_basis"] == DEFAULT_PURPOSES["agreement"].legal_basis
    assert row["retention_end"] > iso_utc(time.time() + 700 * 86400)
    [entry] = [e for e in catalogue.ledger_of(call_id)[0] if e["event"] == "reclassified"]
    assert DEFAULT_PURPOSES["agreement"].legal_basis in entry["detail"]
    store.purposes = {**DEFAULT_PURPOSES, "agreement": PurposeConfig(retention_days=10, legal_basis="shortened")}
    assert store.expires_at(catalogue.get_call(call_id)) < iso_utc(time.time())      # shortened: due now
    assert store.clean().expired == 1
    catalogue.close()


def test_the_bundle_carries_the_report_and_the_facts_in_a_signed_manifest(recorded, tmp_path):
    config, data, call = recorded
    bundle = tmp_path / "bundle.zip"
    callrec("export", str(call["id"]), "--out", str(bundle), "--config", str(config), "--data", str(data),
            "--language", "nl")
    zipped = zipfile.ZipFile(bundle)
    manifest = json.loads(zipped.read("manifest.json"))
    assert manifest["controller"]["controller"] == PRIVACY["controller"]
    assert manifest["controller"]["authority"]["url"] == "https://www.dataprotectionauthority.be"
    [fields] = manifest["calls"]
    assert (fields["legal_basis"], fields["retention_end"]) == (FIRST_BASIS, call["retention_end"])
    report = zipped.read("report.html").decode()
    assert FIRST_BASIS in report and "Changed later" not in report and "Uw rechten" in report
    checked = callrec("verify", str(bundle), check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A report changed after signing is named.
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as out:
        for name in zipped.namelist():
            body = zipped.read(name)
            out.writestr(name, body.replace(FIRST_BASIS.encode(), b"Consent (GDPR Art. 6(1)(a))") if name == "report.html" else body)
    refused = callrec("verify", str(forged), check=False)
    assert refused.returncode != 0 and "report" in refused.stdout + refused.stderr


def _with_privacy(web_appliance, privacy: dict | None = None, line: dict | None = None, purpose: dict | None = None):
    """The web appliance's config with a [privacy] table, more keys on the shop line, a purpose."""
    config = web_appliance[0]
    text = config.read_text()
    if line:
        text = text.replace('name = "shop"\n', 'name = "shop"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in line.items()))
    if privacy:
        text += _toml_table("privacy", privacy)
    if purpose:
        text += _toml_table("purpose.custom", purpose)
    config.write_text(text)


def _app(web_appliance):
    from web import create_app

    app = create_app(web_appliance[0], secure_cookies=False)
    app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
    app.extensions["callrec"].accounts.add_user("clerk", PASSWORD, "staff", ["office"])
    return app


@pytest.mark.parametrize("lang", ["en", "fr", "nl", "pl"])
def test_the_notice_and_the_counter_sheet_are_public_in_each_language(web_appliance, lang):
    _with_privacy(web_appliance, {**PRIVACY, "recipients": ["Accountant Dupuis (invoices only)"]},
                  line={"optout_digit": "9", "pause_code": "*1"})
    app = _app(web_appliance)
    try:
        anonymous = app.test_client()
        for url in ("/privacy-notice", "/privacy-notice/sheet"):
            response = anonymous.get(f"{url}?lang={lang}")
            assert response.status_code == 200, url
            page = response.data.decode()
            assert f'<html lang="{lang}">' in page and PRIVACY["controller"] in page
            assert "APD/GBA" in page and "Gegevensbeschermingsautoriteit" in page
            assert "30" in page and "1825" in page           # the purposes' retention, in days
            assert "sha256-" in response.headers["Content-Security-Policy"]
            assert 'id="opt-out"' in page
        notice = anonymous.get(f"/privacy-notice?lang={lang}").data.decode()
        for word in WORDS[lang]:
            assert word in notice, word
        assert "Accountant Dupuis" in notice and "Rue Haute 12" in notice and "dpo@martin.example" in notice
        assert "cap1" not in notice and "GPIO" not in notice        # no wiring on a public page
        assert anonymous.get("/privacy-notice?lang=de").status_code == 400
        assert anonymous.get(f"/privacy-notice/staff?lang={lang}").status_code == 302       # staff only
        staff = login(app, "clerk").get(f"/privacy-notice/staff?lang={lang}").data.decode()
        assert "clerk" in staff and "*1" in staff and WORDS[lang][0] in staff
    finally:
        app.extensions["callrec"].close()


def test_the_spoken_notice_text_names_the_lines_opt_out_key_and_pause(web_appliance):
    from web.notice import spoken_notice

    _with_privacy(web_appliance, PRIVACY, line={"optout_digit": "#", "pause_code": "*1"})
    app = _app(web_appliance)
    try:
        config = app.extensions["callrec"].config
        shop = config.line[0]
        assert spoken_notice(config, shop, "en") == (
            "Boulangerie Martin SRL records this call. Purpose: training. If you do not want it recorded, press the "
            "hash key now. The recording is paused while you give card details. Ask us for our privacy notice and "
            "your rights.")
        assert "touche dièse" in spoken_notice(config, shop, "fr")
        assert "hekje" in spoken_notice(config, shop, "nl") and "krzyżyk" in spoken_notice(config, shop, "pl")
        assert "press" not in spoken_notice(config, config.line[1], "en")       # the office line has no opt-out
        page = login(app, "admin").get("/settings/").data.decode()
        assert "press the hash key now" in page
    finally:
        app.extensions["callrec"].close()


def test_the_settings_warn_of_a_missing_controller_a_placeholder_basis_and_an_unannounced_opt_out(web_appliance):
    _with_privacy(web_appliance, line={"optout_digit": "9", "notice_text": "This call may be recorded for training."},
                  purpose={"retention_days": 10, "legal_basis": "TODO"})
    app = _app(web_appliance)
    try:
        admin = login(app, "admin")
        page = admin.get("/settings/").data.decode()
        warnings = re.search(r'id="privacy-warnings".*?</div>', page, re.S).group(0)
        assert "privacy.controller, privacy.address, privacy.email" in warnings
        assert "Purpose custom" in warnings and "TODO" in warnings
        assert "Line shop: the notice&#39;s text does not mention the opt-out key 9" in warnings
        # The line's text now says the key, and the controller is filled in on the settings page.
        shop = {k: v for k, v in app.extensions["callrec"].config.line[0].model_dump(mode="json").items()
                if k in ("purpose", "record_from", "optout_digit", "optout_window_s", "pause_max_s", "private_window_s",
                         "capture", "playback", "hook_pin", "hook_active", "ring_active")}
        post(admin, "/settings/line/shop", **shop, notice_text="Press 9 now if you do not want this call recorded.")
        response = post(admin, "/settings/privacy", controller=PRIVACY["controller"], address=PRIVACY["address"],
                        email="not an address", language="fr")
        assert response.status_code == 302
        assert app.extensions["callrec"].config.privacy.controller == ""      # refused: nothing changed
        assert "privacy.email" in admin.get("/settings/").data.decode()
        post(admin, "/settings/privacy", controller=PRIVACY["controller"], address=PRIVACY["address"],
             email=PRIVACY["email"], recipients="Accountant\r\n\r\nLawyer", language="fr")
        privacy = app.extensions["callrec"].config.privacy
        assert (privacy.controller, privacy.address, privacy.recipients, privacy.language) == (
            PRIVACY["controller"], "Rue Haute 12\n1000 Bruxelles", ["Accountant", "Lawyer"], "fr")
        warnings = re.search(r'id="privacy-warnings".*?</div>', admin.get("/settings/").data.decode(), re.S).group(0)
        assert "privacy.controller" not in warnings and "opt-out key 9" not in warnings and "TODO" in warnings
        assert "Boulangerie Martin SRL" in app.test_client().get("/privacy-notice").data.decode()
        assert '<html lang="fr">' in app.test_client().get("/privacy-notice").data.decode()
    finally:
        app.extensions["callrec"].close()


def test_an_opt_out_key_without_the_notice_text_is_warned_of(web_appliance):
    _with_privacy(web_appliance, PRIVACY, line={"optout_digit": "*"})
    app = _app(web_appliance)
    try:
        page = login(app, "admin").get("/settings/").data.decode()
        assert "Line shop: the opt-out key * is set but the notice&#39;s text (notice_text) is not given" in page
    finally:
        app.extensions["callrec"].close()


def test_a_report_in_another_language_is_refused_and_viewing_one_is_audited(web_appliance):
    _with_privacy(web_appliance, PRIVACY)
    app = _app(web_appliance)
    try:
        admin = login(app, "admin")
        assert admin.get("/privacy/report?number=%2B3225550202&lang=de").status_code == 400
        response = admin.get("/privacy/report?number=%2B3225550202&lang=pl")
        assert response.status_code == 200 and "Twoje prawa" in response.data.decode()
        trail = admin.get("/audit.csv").data.decode()
        assert ",access-report," in trail and "2 call(s), pl" in trail
    finally:
        app.extensions["callrec"].close()


@pytest.mark.parametrize("code, privacy, name, url", [
    ("48", {}, "Prezes Urzędu Ochrony Danych Osobowych (UODO)", "https://uodo.gov.pl"),
    ("33", {}, "Commission nationale de l'informatique et des libertés (CNIL)", "https://www.cnil.fr"),
    ("1", {}, None, "https://www.edpb.europa.eu/about-edpb/about-edpb/members_en"),
    ("32", {"authority": "Vlaamse Toezichtcommissie"}, "Vlaamse Toezichtcommissie", "https://www.dataprotectionauthority.be"),
])
def test_the_supervisory_authority_follows_the_country_unless_the_settings_name_one(code, privacy, name, url):
    from appliance.config import Config
    from appliance.transparency import authority

    config = Config.model_validate({"recorder": {"country_code": code}, "privacy": privacy,
                                    "line": [{"name": "t1", "hook_pin": 17, "hook_active": "low", "capture": "c",
                                              "playback": "p", "notice": str(demo_path("notice-en.wav"))}]})
    assert (authority(config).name, authority(config).url) == (name, url)


@pytest.mark.parametrize("basis, placeholder", [
    ("TODO", True), ("tbd: ask the lawyer", True), ("?", True), ("n/a", True), ("Legal basis", True), ("x", True),
    ("Prawnie uzasadniony interes na podstawie RODO art. 6 ust. 1 lit. f", False),
    (DEFAULT_PURPOSES["agreement"].legal_basis, False)])
def test_a_placeholder_legal_basis_is_told_from_a_real_one(basis, placeholder):
    from web.notice import is_placeholder

    assert is_placeholder(basis) is placeholder
