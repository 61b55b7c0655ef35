"""A sealed recording in headless Chromium, through the real server (hypercorn, HTTPS): the page
says the store is locked until it is unlocked; then the player plays and seeks as with a plain
file (its Range requests open only the sealed records they touch)."""

from appliance.clock import iso_utc
from appliance.store.archive import SPOOL_DIR, encode_spool, record_archive
from appliance.store.catalogue import Catalogue
from appliance.store.keyslots import KeySlots
from appliance.store.sealing import Sealer
from appliance.store.spool import SpoolWriter
from conftest import PASSWORD, RATE, tone, wait_for
from test_web_browser import browser, log_in  # noqa: F401 (a fixture)


def sealed_call(data, seconds: float) -> dict:
    """A call recorded and finalised as the recorder does in a sealed store."""
    catalogue = Catalogue(data)
    writer = SpoolWriter(data / SPOOL_DIR / "shop-1.wav", RATE, flush_interval=0.1, sealer=Sealer.load(data))
    writer.append((tone(440, seconds, 0.3) * 32767).astype("<i2").tobytes())
    writer.close()
    now = iso_utc(1_800_000_000)
    call_id = catalogue.add_call(line="shop", direction="incoming", number="+3225550404", started_at=now,
                                 answered_at=now, purpose="training", state="recording",
                                 spool=f"{SPOOL_DIR}/shop-1.wav", sample_rate=RATE)
    encoded = encode_spool(catalogue, data, call_id, "opus", 16000, Sealer.load(data), writer.stream)
    row = record_archive(catalogue, encoded, "complete", ended_at=now)
    catalogue.close()
    return row


def test_a_sealed_call_plays_and_seeks_in_the_browser_once_the_store_is_unlocked(web_appliance, browser):
    from web.server import WebServer

    config, data, _ = web_appliance
    secret = KeySlots(data).create()
    call = sealed_call(data, 20.0)
    assert (data / call["file"]).read_bytes().startswith(b"CALLREC-SEALED") and call["duration_s"] == 20.0
    server = WebServer(config)
    server.app.extensions["callrec"].accounts.add_user("owner", PASSWORD, "admin", None)
    server.start()
    base = f"https://127.0.0.1:{server.web.https_port}"
    try:
        page = browser.new_page(ignore_https_errors=True, locale="en-GB")
        page.goto(f"{base}/login")
        log_in(page, f"{base}/")
        answer = page.goto(f"{base}/calls/{call['id']}/audio")
        assert answer.status == 423 and "the store is locked: a user's login unlocks it" in page.content()

        server.app.extensions["callrec"].unlock(secret)
        page.goto(f"{base}/calls/{call['id']}")
        page.wait_for_selector("#player")
        page.evaluate("document.getElementById('player').play()")
        assert wait_for(lambda: page.evaluate("document.getElementById('player').currentTime") > 0.2, 10)
        assert abs(page.evaluate("document.getElementById('player').duration") - 20.0) < 0.1
        box = page.locator("#waveform").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
        assert wait_for(lambda: page.evaluate("document.getElementById('player').currentTime") > 12.2, 10)
        # What the page fetches is the plain recording.
        fetched = page.evaluate(f"""fetch('/calls/{call["id"]}/download').then(r => r.arrayBuffer())
                                    .then(b => Array.from(new Uint8Array(b.slice(0, 4))))""")
        assert bytes(fetched) == b"OggS"
    finally:
        server.stop()
