"""A sealed store in headless Chromium, against the real server (`callrec web`): after a start the
status page says the store is locked and since when, the call list shows "locked" for the caller;
the owner's login unlocks it and the list shows the caller's number."""

import time

from appliance.clock import iso_utc
from appliance.config import demo_path
from appliance.keys import ensure_device_key
from appliance.store.catalogue import Catalogue
from appliance.store.keyslots import KeySlots, recovery_text
from conftest import PASSWORD, WEB_CONFIG, callrec, free_port, record_call
from test_web_browser import ARTIFACTS, browser, start_web  # noqa: F401 (browser: fixture)

NUMBER = "+3225550202"


def test_a_login_unlocks_a_sealed_store_and_the_call_list_shows_the_caller(tmp_path, browser):
    config = tmp_path / "appliance.toml"
    https_port = free_port()
    config.write_text(WEB_CONFIG.format(https_port=https_port, http_port=free_port(),
                                        notice=demo_path("notice-en.wav")))
    data = tmp_path / "data"
    ensure_device_key(data)
    recovery = recovery_text(KeySlots(data).create())
    catalogue = Catalogue(data)
    call = record_call(catalogue, data, "shop", NUMBER, 2.0, 440, iso_utc(time.time() - 600))
    catalogue.close()
    # The owner gets a key slot with the recovery key; the clerk, made without it, has none.
    callrec("user", "password", "owner", "--role", "admin", "--recovery-key", "--config", str(config),
            input=f"{recovery}\n{PASSWORD}\n{PASSWORD}\n")
    callrec("user", "password", "clerk", "--role", "staff", "--config", str(config),
            input=f"{PASSWORD}\n{PASSWORD}\n")

    base, process = start_web(config, https_port)
    try:
        page = browser.new_page(ignore_https_errors=True, locale="en-GB")
        page.goto(f"{base}/login")
        page.fill("input[name=name]", "clerk")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        assert page.locator("td.number").first.inner_text().startswith("locked")
        page.goto(f"{base}/status")
        locked = page.locator("#store-locked").inner_text()
        assert "locked since start-up" in locked and str(time.localtime().tm_year) in locked
        page.screenshot(path=ARTIFACTS / "sealed-status-locked.png", full_page=True)
        page.click("text=Log out")

        page.fill("input[name=name]", "owner")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        row = page.locator(f"table.calls tbody tr:has(a[href='/calls/{call['id']}'])")
        assert row.locator("td.number").inner_text().strip() == NUMBER
        page.screenshot(path=ARTIFACTS / "sealed-calls-unlocked.png", full_page=True)
        page.goto(f"{base}/status")
        assert page.locator("#store-locked").count() == 0
    finally:
        process.terminate()
        process.wait(timeout=10)
