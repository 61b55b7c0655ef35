"""A customer's access report as a privacy officer makes it and the customer reads or prints it: in
headless Chromium against the real server, in each of the four languages, from the privacy page;
then in the signed bundle. Screenshots and the printed PDFs are saved in each test's tmp folder."""

import json
import re
import time
import zipfile

import pytest

from appliance.clock import iso_utc
from appliance.config import load_config
from appliance.store.catalogue import Catalogue
from appliance.store.retention import Store
from conftest import PASSWORD, callrec, record_call
from test_web_browser import browser, log_in, server  # noqa: F401  (fixtures)
from web.i18n import day

NUMBER = "+3225550202"
BASIS = "Quality of our advice: legitimate interest (GDPR Art. 6(1)(f))"
PRIVACY = """
[privacy]
controller = "Boulangerie Martin SRL"
address = "Rue Haute 12\\n1000 Bruxelles"
email = "privacy@martin.example"
phone = "+32 2 555 00 00"
recipients = ["Accountant Dupuis (invoices only)"]

[purpose.advice]
retention_days = 45
legal_basis = "{basis}"
"""
# What the report must say in each language: its title, the rights' heading, erasure, the authority.
EXPECTED = {
    "en": ("Your recorded phone calls: access report", "Your rights", "Erasure", "Supervisory authority", "incoming"),
    "fr": ("Vos appels téléphoniques enregistrés : rapport d'accès", "Vos droits", "Effacement", "Autorité de contrôle",
           "entrant"),
    "nl": ("Uw opgenomen telefoongesprekken: inzagerapport", "Uw rechten", "Wissing", "Toezichthoudende autoriteit",
           "inkomend"),
    "pl": ("Twoje nagrane rozmowy telefoniczne: raport dostępu", "Twoje prawa", "Usunięcie", "Organ nadzorczy",
           "przychodzące"),
}


@pytest.fixture
def web_appliance(web_appliance):
    """The browser tests' appliance with the controller's identity, a purpose of its own, a call of
    the customer recorded under it (its legal facts stored then, and sent to the CRM), a missed
    call of theirs, and the owner's account."""
    from web.accounts import Accounts

    config, data, calls = web_appliance
    config.write_text(config.read_text() + PRIVACY.format(basis=BASIS))
    settings = load_config(config)
    catalogue = Catalogue(data)
    store = Store(catalogue, data, settings.purpose, settings.store)
    started = iso_utc(time.time() - 7200)
    advice = record_call(catalogue, data, "shop", NUMBER, 5.0, 770, started)["id"]
    catalogue.update_call(advice, purpose="advice", crm_sent_at=iso_utc(time.time() - 7000),
                          **store.legal_facts("advice", started))
    missed_at = iso_utc(time.time() - 600)
    catalogue.add_call(line="shop", direction="incoming", number=NUMBER, started_at=missed_at, purpose="training",
                       state="missed", **store.legal_facts("training", missed_at))
    calls["advice"] = catalogue.get_call(advice)
    catalogue.close()
    accounts = Accounts(data / "web")
    accounts.add_user("owner", PASSWORD, "admin", None)
    accounts.close()
    return config, data, calls


@pytest.mark.parametrize("lang", ["en", "fr", "nl", "pl"])
def test_the_access_report_reads_and_prints_in_the_customers_language(server, browser, tmp_path, lang):  # noqa: F811
    base, web, config, data, calls, process = server
    context = browser.new_context(ignore_https_errors=True, locale="en-GB")
    page = context.new_page()
    page.goto(f"{base}/privacy?number=%2B3225550202")
    log_in(page, f"{base}/privacy?number=%2B3225550202")
    page.select_option("#access-report select[name=lang]", lang)
    with context.expect_page() as opened:
        page.click("#access-report button")
    report = opened.value
    report.wait_for_load_state()
    report.screenshot(path=tmp_path / f"report-{lang}.png", full_page=True)
    title, rights, erasure, authority, incoming = EXPECTED[lang]
    text = report.inner_text("body")
    assert report.locator("h1").inner_text() == title
    assert report.evaluate("document.documentElement.lang") == lang
    assert "Boulangerie Martin SRL" in report.inner_text("#controller") and "Rue Haute 12" in text
    # Four calls of the number: two recorded before the legal facts were stored, one under the
    # shop's own purpose, one missed.
    rows = report.locator("#calls tr.call")
    assert rows.count() == 4
    advice = calls["advice"]
    row = rows.filter(has_text=BASIS)
    assert row.count() == 1 and incoming in row.inner_text()
    assert row.locator(".retention-end").inner_text() == day(advice["retention_end"], lang=lang)
    assert "CRM" in row.inner_text()
    unknown = {"en": "not recorded at the time", "fr": "non enregistré à l'époque", "nl": "destijds niet vastgelegd",
               "pl": "nie zapisano w tamtym czasie"}[lang]
    assert report.locator(".legal-basis", has_text=unknown).count() == 2
    assert rights in report.locator("h2").all_inner_texts()
    assert erasure in report.inner_text("#rights") and report.locator("#rights li").count() == 6
    assert authority in text and "APD/GBA" in report.inner_text("#authority")
    assert "Accountant Dupuis" in report.inner_text("#recipients")
    # The inlined style applies under the page's Content-Security-Policy, and nothing of the web
    # UI's navigation is there; it prints on A4.
    assert report.evaluate("getComputedStyle(document.querySelector('th')).backgroundColor") == "rgb(238, 238, 238)"
    assert report.locator("nav, header, form").count() == 0
    report.emulate_media(media="print")
    pdf = report.pdf(prefer_css_page_size=True)
    (tmp_path / f"report-{lang}.pdf").write_bytes(pdf)
    pages = [(float(w), float(h)) for w, h in re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", pdf)]
    assert pdf.startswith(b"%PDF") and pages and all(round(w) == 595 and round(h) == 842 for w, h in pages)   # A4
    context.close()


def test_the_bundle_holds_the_report_and_a_manifest_with_the_same_facts(server, browser, tmp_path):  # noqa: F811
    base, web, config, data, calls, process = server
    page = browser.new_page(ignore_https_errors=True, accept_downloads=True, locale="en-GB")
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{base}/privacy?number=%2B3225550202")
    log_in(page, f"{base}/privacy?number=%2B3225550202")
    page.select_option("form[action$='/privacy/export'] select[name=lang]", "fr")
    page.click("text=Export all (signed bundle)")
    page.wait_for_selector("#export-download:not([hidden])", timeout=20000)
    with page.expect_download() as download:
        page.click("#export-download")
    bundle = tmp_path / "bundle.zip"
    download.value.save_as(bundle)
    checked = callrec("verify", str(bundle), check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    zipped = zipfile.ZipFile(bundle)
    manifest = json.loads(zipped.read("manifest.json"))
    assert manifest["controller"]["controller"] == "Boulangerie Martin SRL"
    assert manifest["controller"]["authority"]["name"].endswith("(APD/GBA)")
    advice = next(c for c in manifest["calls"] if c["id"] == calls["advice"]["id"])
    assert (advice["legal_basis"], advice["retention_end"]) == (BASIS, calls["advice"]["retention_end"])
    assert [c["state"] for c in manifest["calls_without_recording"]] == ["missed"]
    (tmp_path / "report.html").write_bytes(zipped.read("report.html"))
    page.goto((tmp_path / "report.html").as_uri())
    page.screenshot(path=tmp_path / "bundle-report.png", full_page=True)
    assert page.locator("h1").inner_text() == EXPECTED["fr"][0]
    assert page.locator("#calls tr.call").count() == 4
    assert page.evaluate("getComputedStyle(document.querySelector('th')).backgroundColor") == "rgb(238, 238, 238)"
