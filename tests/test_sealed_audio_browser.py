"""A sealed recording in headless Chromium, through the real server (hypercorn, HTTPS): the page
says the store is locked until it is unlocked; then the player plays and seeks as with a plain
file (its Range requests open only the sealed records they touch)."""

from appliance.store.keyslots import KeySlots
from conftest import PASSWORD, wait_for
from test_sealed_audio import sealed_call
from test_web_browser import browser, owner_page  # noqa: F401 (a fixture)


def test_a_sealed_call_plays_and_seeks_in_the_browser_once_the_store_is_unlocked(web_appliance, browser):
    from web.server import WebServer

    config, data, _ = web_appliance
    secret = KeySlots(data).create()
    call = sealed_call(data, 20.0, "shop")
    assert (data / call["file"]).read_bytes().startswith(b"CALLREC-SEALED") and call["duration_s"] == 20.0
    server = WebServer(config)
    server.app.extensions["callrec"].accounts.add_user("owner", PASSWORD, "admin", None)
    server.start()
    base = f"https://127.0.0.1:{server.web.https_port}"
    try:
        page = owner_page(browser, base)
        answer = page.goto(f"{base}/calls/{call['id']}/audio")
        assert answer.status == 423 and "The store is locked since start-up" in page.content()

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
