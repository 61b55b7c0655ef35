"""Contacts and a filtered export as an owner uses them, in headless Chromium against the real
server (`callrec web`), with the real recorder (`callrec simulate`) taking the next call.
Screenshots in `test-artifacts/screenshots/`."""

import json
import zipfile

from conftest import callrec, write_config, write_scenario
from test_web_browser import ARTIFACTS, browser, owner_page, server  # noqa: F401 (fixtures)


def test_a_contact_added_then_edited_on_the_page_names_the_next_call(server, browser, tmp_path):  # noqa: F811
    base, web, config, data, calls, process = server
    page = owner_page(browser, base, data, accept_downloads=True)
    page.click("nav >> text=Contacts")
    page.fill("#contact-add input[name=number]", "02 555 44 44")
    page.fill("#contact-add input[name=name]", "Jean Dupont")
    page.click("#contact-add button")
    page.wait_for_selector("text=Contact added.")
    row = page.locator("tr[data-number='+3225554444']")
    row.locator("input[name=name]").fill("Jean Dupont (Dupont SA)")
    row.locator("input[name=company]").fill("Dupont SA")
    row.locator("button:has-text('Save')").click()
    page.wait_for_selector("text=Contact saved.")
    page.screenshot(path=ARTIFACTS / "contacts.png", full_page=True)
    # A bad number is refused on the page and nothing changes.
    page.fill("#contact-add input[name=number]", "02 555 44 4x")
    page.fill("#contact-add input[name=name]", "Nobody")
    page.click("#contact-add button")
    page.wait_for_selector("text=is not a phone number")
    assert page.locator("tr[data-number]").count() == 1

    # The real recorder takes a call from that number (written as the line sends it).
    sim = tmp_path / "sim"
    sim.mkdir()
    scenario = write_scenario(sim, [{"direction": "incoming", "at": 0.5, "rings": 1, "caller_id": "+3225554444",
                                     "talk": 4.0}], ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(scenario), "--config", str(write_config(sim)), "--data", str(data))

    page.goto(f"{base}/?q=5554444")
    rows = page.locator("table.calls tbody tr")
    assert rows.count() == 1
    assert "Jean Dupont (Dupont SA)" in rows.first.inner_text()
    page.screenshot(path=ARTIFACTS / "calls-named.png", full_page=True)


def test_a_filtered_export_from_the_calls_list_shows_its_size_and_progress_and_verifies(
        server, browser, tmp_path):  # noqa: F811
    from appliance.keys import fingerprint, load_private_key, public_key_hex

    base, web, config, data, calls, process = server
    page = owner_page(browser, base, data, accept_downloads=True)
    page.goto(f"{base}/")
    page.click("summary")
    page.select_option("select[name=line]", "office")
    page.click("button:has-text('Find')")
    page.wait_for_url("**line=office**")
    assert page.locator("table.calls tbody tr").count() == 2
    page.click("#export-selection")
    wanted = {calls["customer_again"]["id"], calls["office"]["id"]}
    size = sum(calls[name]["size_bytes"] for name in ("customer_again", "office"))
    assert size < 1e6
    assert page.inner_text("#export-size") == f"2 recording(s), {size / 1e3:.0f} kB in all."
    page.screenshot(path=ARTIFACTS / "export-selection.png", full_page=True)
    page.click("button:has-text('Start the export')")
    page.wait_for_selector("#export-download:not([hidden])", timeout=20000)
    assert page.inner_text("#export-text") in ("2 / 2", "2 of 2 recordings")
    assert page.inner_text("#export-bytes") == f"{size / 1e3:.0f} kB of {size / 1e3:.0f} kB"
    assert page.evaluate("document.getElementById('export-progress').value") == 2
    page.screenshot(path=ARTIFACTS / "export-filtered.png", full_page=True)
    with page.expect_download() as download:
        page.click("#export-download")
    bundle = tmp_path / "office.zip"
    download.value.save_as(bundle)
    key = fingerprint(public_key_hex(load_private_key(data)))
    verified = callrec("verify", str(bundle), "--key", key)
    assert "2 call(s)" in verified.stdout and "OK" in verified.stdout
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    assert {call["id"] for call in manifest["calls"]} == wanted
