"""The web UI as a shop owner and a privacy officer use it: in headless Chromium, against the real
server (`callrec web`, HTTPS with the device certificate). Screenshots of the main pages are saved
in `test-artifacts/screenshots/`."""

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import PASSWORD, callrec, wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CALLREC_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")) / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update",
                 "--autoplay-policy=no-user-gesture-required"]



class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def start_web(config: Path, https_port: int) -> tuple[str, subprocess.Popen]:
    """`callrec web` on `config`, once it answers: (its base URL, its process)."""
    import ssl

    process = subprocess.Popen([sys.executable, "-m", "appliance", "web", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"https://127.0.0.1:{https_port}"

    def answers():
        try:
            urllib.request.urlopen(f"{base}/healthz", context=ssl._create_unverified_context(), timeout=1)
            return True
        except OSError:
            return False
    assert wait_for(answers, 20), process.stdout.read() if process.poll() is not None else "no answer"
    return base, process


@pytest.fixture
def server(web_appliance):
    """`callrec web` serving the appliance; yields (base URL, config, data dir, calls, process)."""
    import tomllib

    config, data, calls = web_appliance
    web = tomllib.loads(config.read_text())["web"]
    base, process = start_web(config, web["https_port"])
    yield base, web, config, data, calls, process
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def log_in(page, lands_on: str) -> None:
    """Log in as the owner on the login page shown, and wait for the page it leads to."""
    page.fill("input[name=name]", "owner")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lands_on)


def owner_page(browser, base: str, data: Path | None = None, **options):
    """A new page (with Playwright's `options`) logged in as the owner, an admin made first in the
    data folder `data` where it is given; dialogs are accepted."""
    if data is not None:
        from web.accounts import Accounts

        accounts = Accounts(data / "web")
        accounts.add_user("owner", PASSWORD, "admin", None)
        accounts.close()
    page = browser.new_page(ignore_https_errors=True, locale="en-GB", **options)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{base}/login")
    log_in(page, f"{base}/")
    return page


def test_plain_http_is_sent_to_https(server):
    base, web, *_ = server
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(f"http://127.0.0.1:{web['http_port']}/calls/1?x=y", timeout=5)
    assert answer.value.code == 301
    assert answer.value.headers["Location"] == f"https://127.0.0.1:{web['https_port']}/calls/1?x=y"
    with pytest.raises(urllib.error.HTTPError) as answer:       # no header can be slipped in
        opener.open(f"http://127.0.0.1:{web['http_port']}/a%0d%0aSet-Cookie:%20x=1", timeout=5)
    assert answer.value.headers["Location"] == f"https://127.0.0.1:{web['https_port']}/a%0D%0ASet-Cookie:%20x=1"
    assert "Set-Cookie" not in answer.value.headers


def test_an_owner_sets_up_finds_plays_downloads_exports_and_erases_a_call(server, browser, tmp_path):
    base, web, config, data, calls, process = server
    page = browser.new_page(ignore_https_errors=True, accept_downloads=True, locale="en-GB")
    page.on("dialog", lambda dialog: dialog.accept())

    # First run: only setup, with the code the appliance printed.
    page.goto(f"{base}/")
    assert page.url.endswith("/setup")
    code = callrec("setup-code", "--config", str(config)).stdout.strip()
    page.screenshot(path=ARTIFACTS / "setup.png", full_page=True)
    page.fill("input[name=code]", code)
    page.fill("input[name=name]", "owner")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=confirm]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    page.screenshot(path=ARTIFACTS / "calls.png", full_page=True)

    # Log out and in again, as on the next day.
    page.click("text=Log out")
    log_in(page, f"{base}/")

    # Find the supplier's call from Tuesday by its number, and open it.
    page.fill("input[name=q]", "5550101")
    page.press("input[name=q]", "Enter")
    rows = page.locator("table.calls tbody tr")
    assert rows.count() == 1
    rows.first.locator("a").click()
    page.wait_for_selector("#player")
    page.screenshot(path=ARTIFACTS / "call.png", full_page=True)

    # Play, then seek by clicking the waveform at 60 %: the player carries on from about 12 s.
    page.evaluate("document.getElementById('player').play()")
    assert wait_for(lambda: page.evaluate("document.getElementById('player').currentTime") > 0.2, 10)
    box = page.locator("#waveform").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    assert wait_for(lambda: page.evaluate("document.getElementById('player').currentTime") > 12.2, 10)

    # Download: the bytes are the archived file's.
    with page.expect_download() as download:
        page.click("a:has-text('Download')")
    saved = tmp_path / "download.opus"
    download.value.save_as(saved)
    assert saved.read_bytes() == (data / calls["supplier"]["file"]).read_bytes()

    # A privacy request: every call of the customer's number, exported in a bundle that verifies…
    page.goto(f"{base}/privacy")
    page.fill("input[name=number]", "+32 2 555 02 02")
    page.press("input[name=number]", "Enter")
    assert page.locator("table.calls tbody tr").count() == 2
    page.screenshot(path=ARTIFACTS / "privacy.png", full_page=True)
    page.click("button:has-text('Export all')")
    page.wait_for_selector("#export-download:not([hidden])", timeout=20000)
    page.screenshot(path=ARTIFACTS / "export.png", full_page=True)
    with page.expect_download() as download:
        page.click("#export-download")
    bundle = tmp_path / "bundle.zip"
    download.value.save_as(bundle)
    verified = callrec("verify", str(bundle))
    assert "2 call(s)" in verified.stdout and "OK" in verified.stdout

    # …then erased.
    page.goto(f"{base}/privacy?number=%2B32+2+555+02+02")
    page.fill("input[name=confirm]", "+32 2 555 02 02")
    page.click("button:has-text('Erase all')")
    page.wait_for_selector("text=2 call(s) erased")
    assert "Reference for the customer: E-" in page.content() and "555" not in page.url.split("/", 3)[3]   # not left in the history (the port may hold 555)
    page.goto(f"{base}/privacy?number=%2B32+2+555+02+02")
    assert page.locator("table.calls tbody tr td.muted").count() == 1      # "No calls of this number."
    remaining = {call["number"] for call in callrec_calls(data)}
    assert remaining == {"+3225550101", "+3225550303"}

    # The other main pages, for the record (and a phone-sized calls list).
    for name in ("status", "settings/", "settings/users", "audit"):
        page.goto(f"{base}/{name}")
        page.screenshot(path=ARTIFACTS / f"{name.strip('/').replace('/', '-')}.png", full_page=True)
    phone = browser.new_page(ignore_https_errors=True, viewport={"width": 390, "height": 844})
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"{base}/")
    phone.screenshot(path=ARTIFACTS / "calls-phone.png", full_page=True)


def test_the_status_page_follows_the_recorder_live(server, browser):
    base, web, config, data, calls, process = server
    import json

    from web.accounts import Accounts
    Accounts(data / "web").add_user("owner", PASSWORD, "admin", None)
    page = browser.new_page(ignore_https_errors=True)
    page.goto(f"{base}/login")
    page.fill("input[name=name]", "owner")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{base}/status")
    assert "not running" in page.inner_text("#recorder")
    # The recorder's live state appears: the shop line in a call, at -23 dBFS.
    live = data / "run"
    live.mkdir(exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 65))
    state = {"updated_at": started, "pid": process.pid, "version": "x", "clock_synced": True, "lines": [
        {"name": "shop", "state": "in_call", "hook": "off", "call_id": 9, "call_started_at": started,
         "direction": "incoming", "number": "+3225550999", "level_dbfs": -23.0, "peak_dbfs": -9.0,
         "clipping": False, "capture_connected": True, "modem_connected": None},
        {"name": "office", "state": "idle", "hook": "on", "call_id": None, "call_started_at": None,
         "direction": None, "number": None, "level_dbfs": -70.0, "peak_dbfs": -60.0, "clipping": False,
         "capture_connected": True, "modem_connected": None}]}
    (live / "live.json").write_text(json.dumps(state))
    page.wait_for_selector("#recorder:has-text('is running')", timeout=10000)
    assert page.inner_text("#clock") == "yes"
    shop = page.locator("[data-line=shop]")
    assert "+3225550999" in shop.inner_text()
    assert wait_for(lambda: "in a call 1:0" in shop.locator("[data-field=state]").inner_text(), 5)   # 1:05…
    assert shop.locator("meter").get_attribute("value") is not None
    assert float(page.evaluate("document.querySelector('[data-line=shop] meter').value")) == -23.0
    page.screenshot(path=ARTIFACTS / "status-live.png", full_page=True)


def callrec_calls(data: Path) -> list[dict]:
    import json
    return json.loads(callrec("calls", "--json", "--data", str(data)).stdout)


def test_an_admin_turns_on_a_second_factor_and_logs_in_with_the_apps_code(server, browser):
    import pyotp

    base, web, config, data, calls, process = server
    page = owner_page(browser, base, data)

    # Your account: set up a second factor, scan the QR code (here: read the key), confirm with a code.
    page.click("a.user")
    page.fill("form:has(button[value=second-factor-start]) input[name=current]", PASSWORD)
    page.click("button[value=second-factor-start]")
    assert page.locator("img.qr").evaluate("img => img.complete && img.naturalWidth > 100")
    page.screenshot(path=ARTIFACTS / "second-factor.png", full_page=True)
    totp = pyotp.TOTP(page.inner_text("#second-factor-key"))
    page.fill("form:has(button[value=second-factor-on]) input[name=current]", PASSWORD)
    page.fill("input[name=code]", totp.now())
    page.click("button[value=second-factor-on]")
    assert "Logging in now asks for a code" in page.inner_text("main")

    # The next login asks for the code after the password; a wrong one is refused.
    page.click("text=Log out")
    log_in(page, f"{base}/login/code")
    page.fill("input[name=code]", "000000")
    page.click("button[type=submit]")
    assert "The code is wrong" in page.inner_text("main")
    page.fill("input[name=code]", totp.at(time.time() + 30))     # the next code: the last one is spent
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert "owner (admin)" in page.inner_text("header")


def test_the_status_page_says_so_in_words_when_the_recorder_is_down(server, browser):
    base, web, config, data, calls, process = server
    page = owner_page(browser, base, data)
    page.goto(f"{base}/status")
    page.wait_for_timeout(2500)         # the event stream's first states have been shown
    body = page.inner_text("body")
    assert "not running" in page.inner_text("#recorder")
    assert "undefined" not in body and "NaN" not in body
    for line in ("shop", "office"):
        card = page.locator(f"[data-line={line}]")
        assert card.locator("[data-field=state]").inner_text() == "not running"
        assert card.locator("[data-field=level-text]").inner_text() == "—"
    # Four short recordings: some tens of kB, not "0.0 MB".
    stored = page.locator("dt:has-text('Recordings') + dd").inner_text()
    assert re.fullmatch(r"\d+ kB", stored), stored
    assert re.fullmatch(r"[\d,.]+ [kMGT]B \(the cleaner keeps [\d,.]+ [kMGT]B\)",
                        page.locator("dt:has-text('Free space') + dd").inner_text())


TGKILL = {"x86_64": 234, "aarch64": 131, "armv7l": 268}     # the syscall's number


@pytest.mark.skipif(os.uname().machine not in TGKILL, reason="tgkill's number on this machine is not known here")
def test_sigterm_that_lands_on_a_worker_thread_stops_the_web_ui(server):
    import ctypes
    import signal

    *_, process = server
    # The kernel gives a process's signal to any of its threads; systemd's SIGTERM may land on one
    # of the server's, and the web UI must stop all the same.
    worker = max(int(tid) for tid in os.listdir(f"/proc/{process.pid}/task") if int(tid) != process.pid)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(TGKILL[os.uname().machine], process.pid, worker, signal.SIGTERM) == 0
    assert process.wait(timeout=15) == 0
