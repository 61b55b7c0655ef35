"""A call in progress from the screen, in headless Chromium against the real web server (`callrec
web`) and the real recorder (simulated line t1: MockFactory pins, a FIFO-fed ALSA capture PCM in
real time): a supervisor hears the line live within two seconds; staff pause and resume it and the
recording keeps silence there; whoever lacks the line is refused. Screenshots in
`test-artifacts/screenshots/`."""

import http.client
import http.cookiejar
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from appliance.config import demo_path
from appliance.store.catalogue import AuditFilter, Catalogue
from conftest import PASSWORD, RATE, free_port, recording, simulated_cards, stop, wait_for
from test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, start_web

CONFIG = """
[recorder]
data_dir = "{data}"
dialling_window_s = 0.0

[web]
https_port = {https_port}
http_port = 0
hostname = "localhost"

[[line]]
name = "t1"
hook_pin = 17
hook_active = "low"
capture = "cap"
playback = "play"
outgoing = "off"
notice = "{notice}"

[[line]]
name = "t2"
hook_pin = 18
hook_active = "low"
capture = "cap2"
playback = "play2"
notice = "{notice}"
"""

# What the browser plays, as the page's own Web Audio calls hand it over (with when).
CAPTURE_PLAYED = """
window.__heard = [];
const copy = AudioBuffer.prototype.copyToChannel;
AudioBuffer.prototype.copyToChannel = function (data, channel, start) {
  window.__heard.push([performance.now(), Array.from(data)]);
  return copy.call(this, data, channel, start);
};
"""


@pytest.fixture
def appliance(tmp_path, monkeypatch):
    """The recorder (in this process) and `callrec web` on one configuration, the line's audio
    `line_audio` fed in real time from `fed_at`; users boss (supervisor of t1), clerk (staff of t1)
    and stranger (supervisor of t2). Yields a dict of what the tests use."""
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder
    from appliance.simulate import simulated
    from web.accounts import Accounts

    data = tmp_path / "data"
    https_port = free_port()
    config_path = tmp_path / "appliance.toml"
    config_path.write_text(CONFIG.format(data=data, https_port=https_port, notice=demo_path("notice-en.wav")))
    rng = np.random.default_rng(7)
    line_audio = rng.normal(0, 0.15, 60 * RATE)
    fed_at = time.monotonic()
    alsa, feeders = simulated_cards(data, ["t1", "t2"], (np.clip(line_audio, -1, 0.999) * 32768).astype("<i2").tobytes())
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
    accounts = Accounts(data / "web")
    accounts.add_user("owner", PASSWORD, "admin", None)
    accounts.add_user("boss", PASSWORD, "supervisor", ["t1"])
    accounts.add_user("clerk", PASSWORD, "staff", ["t1"])
    accounts.add_user("stranger", PASSWORD, "supervisor", ["t2"])
    accounts.close()
    factory = MockFactory()
    recorder = Recorder(simulated(load_config(config_path), data), pin_factory=factory)
    recorder.start()
    base, web = start_web(config_path, https_port)
    yield {"base": base, "data": data, "recorder": recorder, "hook": factory.pin(17), "audio": line_audio,
           "fed_at": fed_at, "web": web}
    web.terminate()
    web.wait(timeout=10)
    recorder.stop()
    stop(feeders)
    factory.reset()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def logged_in(browser, base: str, name: str):
    page = browser.new_page(ignore_https_errors=True, locale="en-GB")
    page.goto(f"{base}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url == f"{base}/", page.inner_text("body")
    return page


def call_started(appliance) -> int:
    line = appliance["recorder"].lines[0]
    appliance["hook"].drive_low()
    assert wait_for(lambda: line.call is not None and line.call.id is not None, 5)
    return line.call.id


def hang_up(appliance) -> None:
    appliance["hook"].drive_high()
    assert wait_for(appliance["recorder"].idle, 15)


def audit(data, action: str) -> list[dict]:
    catalogue = Catalogue(data)
    try:
        return catalogue.audit_entries(AuditFilter(action=action), 10)
    finally:
        catalogue.close()


def test_a_supervisor_hears_the_call_in_progress_within_two_seconds(appliance, browser):
    base, data = appliance["base"], appliance["data"]
    call_id = call_started(appliance)
    page = logged_in(browser, base, "boss")
    page.add_init_script(CAPTURE_PLAYED)
    page.goto(f"{base}/status")
    page.locator("[data-line=t1] [data-field=listen]").wait_for(state="visible", timeout=5000)
    page.click("[data-line=t1] [data-field=listen]")
    page.wait_for_url(f"{base}/calls/{call_id}#live")
    page.click("#listen-live")
    listening = time.monotonic()
    # The browser's clock against this one's: performance.now() read between two monotonic readings.
    before = time.monotonic()
    browser_now = page.evaluate("performance.now()") / 1000
    clock_offset = (before + time.monotonic()) / 2 - browser_now
    time.sleep(6.0)
    page.screenshot(path=ARTIFACTS / "call-live.png", full_page=True)
    heard = page.evaluate("window.__heard")
    assert heard, "nothing played"
    arrivals = np.array([at / 1000 + clock_offset for at, _ in heard])
    samples = np.concatenate([np.array(chunk) for _, chunk in heard])
    ends = np.cumsum([len(chunk) for _, chunk in heard])
    assert len(samples) > 4 * RATE                   # a continuous stream
    # Where in the line's audio the stream starts: the peak of the cross-correlation.
    line_audio = appliance["audio"]
    piece = samples[:RATE]
    scores = np.correlate(line_audio[:int((time.monotonic() - appliance["fed_at"]) * RATE)], piece, "valid")
    first = int(np.argmax(scores))
    match = np.corrcoef(line_audio[first:first + len(samples)], samples)[0, 1]
    assert match > 0.99, match                      # the line itself, sample for sample
    # Each piece played: how long after its last sample went down the line.
    latency = arrivals - (appliance["fed_at"] + (first + ends) / RATE)
    print(f"live listen latency: median {np.median(latency):.2f} s, worst {latency.max():.2f} s, "
          f"started {arrivals[0] - listening:.2f} s after the click")
    assert latency.max() < 2.0
    hang_up(appliance)
    page.wait_for_selector("#live-state:has-text('The call has ended.')", timeout=10000)
    [entry] = audit(data, "live-listen")
    assert entry["actor"] == "user:boss" and entry["call_id"] == call_id
    assert entry["detail"].startswith("from ") and entry["detail"].endswith(" s")


def test_staff_pause_and_resume_from_the_screen_and_the_recording_is_silent_there(appliance, browser):
    base, data = appliance["base"], appliance["data"]
    call_id = call_started(appliance)
    page = logged_in(browser, base, "clerk")
    page.goto(f"{base}/status")
    pause = page.locator("[data-line=t1] [data-field=pause]")
    pause.wait_for(state="visible", timeout=5000)
    assert page.locator("[data-line=t1] [data-field=listen]").count() == 0     # staff do not listen
    time.sleep(1.0)
    pause.click()
    page.wait_for_selector("[data-line=t1] [data-field=pause]:has-text('Resume')", timeout=5000)
    page.screenshot(path=ARTIFACTS / "status-paused.png", full_page=True)
    time.sleep(2.0)
    page.goto(f"{base}/calls/{call_id}")
    assert page.locator("#listen-live").count() == 0
    page.click("#pause-button:has-text('Resume')")
    page.wait_for_selector("#pause-button:has-text('Pause')")
    assert "The recording is resumed." in page.inner_text("body")
    time.sleep(1.0)
    hang_up(appliance)
    call = Catalogue(data).get_call(call_id)
    [(start, end, reason)] = Catalogue(data).pauses(call_id)
    assert reason == "screen" and 1.8 < end - start < 5.0
    heard = recording(data, call)
    level = lambda a, b: np.sqrt(np.mean(heard[int(a * RATE):int(b * RATE)] ** 2))
    assert level(start - 0.6, start - 0.1) > 0.05         # the line before the pause
    assert level(start + 0.1, end - 0.1) < 0.002          # silence while paused
    assert level(end + 0.1, end + 0.6) > 0.05             # and after it
    assert [e["actor"] for e in audit(data, "pause")] == ["user:clerk"]
    assert [e["actor"] for e in audit(data, "resume")] == ["user:clerk"]


def test_whoever_lacks_the_line_is_refused_and_nothing_changes(appliance):
    base, data = appliance["base"], appliance["data"]
    call_id = call_started(appliance)

    def session(name: str):
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()),
                                             urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        form = opener.open(f"{base}/login").read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        opener.open(f"{base}/login", data=urllib.parse.urlencode(
            {"name": name, "password": PASSWORD, "csrf_token": token}).encode())
        page = opener.open(f"{base}/account").read().decode()        # the session's own token
        return opener, re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    def status(opener, url: str, data: bytes | None = None) -> int:
        try:
            return opener.open(url, data=data, timeout=5).status
        except urllib.error.HTTPError as refusal:
            return refusal.code
    stranger, token = session("stranger")
    assert status(stranger, f"{base}/calls/{call_id}/pause", urllib.parse.urlencode({"csrf_token": token}).encode()) == 403
    assert status(stranger, f"{base}/calls/{call_id}/live") == 403
    clerk, _ = session("clerk")
    assert status(clerk, f"{base}/calls/{call_id}/live") == 403          # staff pause, never listen
    time.sleep(0.5)
    assert not appliance["recorder"].lines[0].call.rules.paused
    assert audit(data, "pause") == [] and audit(data, "live-listen") == []
    # A listener whose connection drops is audited then, while the call goes on.
    boss, _ = session("boss")
    stream = boss.open(f"{base}/calls/{call_id}/live", timeout=5)
    assert stream.read(44)[:4] == b"RIFF" and len(stream.read(8000)) == 8000
    stream.close()
    assert wait_for(lambda: audit(data, "live-listen"), 5)
    [dropped] = audit(data, "live-listen")
    assert dropped["actor"] == "user:boss" and dropped["call_id"] == call_id
    # One listening (reading as a browser does) when the web server stops: the stream ends, the
    # server stops, the listen is audited.
    stream = boss.open(f"{base}/calls/{call_id}/live", timeout=5)
    def read_on():
        try:
            while stream.read(4096):
                pass
        except (OSError, ValueError, http.client.HTTPException):
            pass                # cut short by the server stopping
    reader = threading.Thread(target=read_on)
    reader.start()
    time.sleep(1.0)
    stopping = time.monotonic()
    appliance["web"].terminate()
    appliance["web"].wait(timeout=10)
    print(f"the web server stopped {time.monotonic() - stopping:.1f} s after it was asked, a listener connected")
    reader.join(5)
    assert not reader.is_alive()
    assert len(audit(data, "live-listen")) == 2
    hang_up(appliance)
    assert Catalogue(data).pauses(call_id) == []
