"""`callrec demo` as `./run-demo` starts it: the real recorder on two simulated lines with calls
coming round after round, the web UI beside it; the status page follows the calls in headless
Chromium, and Ctrl-C stops both and leaves every call finalised."""

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import demo_path
from appliance.live import read_live
from appliance.store.archive import SPOOL_DIR
from conftest import callrec, calls_json, free_port, wait_for
from test_web_browser import browser, owner_page  # noqa: F401  (the browser fixture)

EVERY_S = "16"         # the shortest round the demo's calls fit in: the first call rings within 2 s


def demo_config(folder: Path) -> tuple[Path, int]:
    """The bundled demo configuration as `./run-demo` writes it (the data folder beside it, the web
    UI on free ports); returns it with its HTTPS port."""
    https_port = free_port()
    text = demo_path("appliance.toml").read_text()
    text = text.replace('notice = "notice-en.wav"', f'notice = "{demo_path("notice-en.wav")}"')
    text = text.replace("preroll_s = 2.0", 'preroll_s = 2.0\ndata_dir = "data"')
    text += f'\n[web]\nbind = "127.0.0.1"\nhttps_port = {https_port}\nhttp_port = {free_port()}\nhostname = "localhost"\n'
    path = folder / "appliance.toml"
    path.write_text(text)
    return path, https_port


def answers(port: int) -> bool:
    """Whether something accepts connections on the loopback port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def demo(tmp_path):
    """`callrec demo --web` running on the demo configuration with short rounds; yields (base URL,
    data folder, process, its log file). Stopped at the end if the test has not."""
    config, port = demo_config(tmp_path)
    data = tmp_path / "data"
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "appliance", "demo", "--config", str(config),
                                    "--data", str(data), "--every", EVERY_S, "--web"],
                                   stdout=out, stderr=subprocess.STDOUT)
    assert wait_for(lambda: answers(port), 30), log.read_text()
    yield f"https://127.0.0.1:{port}", data, process, log
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def line_state(data: Path, name: str) -> str | None:
    """A line's state in the recorder's live state (None while it publishes none)."""
    live = read_live(data / "run")
    return next((line["state"] for line in (live or {}).get("lines", []) if line["name"] == name), None)


def test_the_status_page_follows_the_demos_calls(demo, browser, tmp_path, record_property):  # noqa: F811
    base, data, process, log = demo
    page = owner_page(browser, base, data)
    # The list holds no call yet, or the first one already if the machine was slow to get here.
    assert page.locator("table.calls tbody tr").count() == 1
    page.goto(f"{base}/status")
    page.wait_for_selector("#recorder:has-text('is running')", timeout=10000)
    shop = page.locator("[data-line=shop]")

    # The first call: the shop line rings, is answered, carries the call's audio, hangs up.
    assert wait_for(lambda: "in a call" in shop.locator("[data-field=state]").inner_text(), 15), log.read_text()
    assert wait_for(lambda: re.fullmatch(r"-\d+(\.\d)? dBFS", shop.locator("[data-field=level-text]").inner_text())
                    and float(page.evaluate("document.querySelector('[data-line=shop] meter').value")) > -60, 5)
    in_call = tmp_path / "status-call.png"
    page.screenshot(path=in_call, full_page=True)
    assert wait_for(lambda: shop.locator("[data-field=state]").inner_text() == "idle", 15), log.read_text()
    idle = tmp_path / "status-idle.png"
    page.screenshot(path=idle, full_page=True)
    for name, path in (("status during a call", in_call), ("status idle", idle)):
        record_property(name, str(path))
        print(f"{name}: {path}")
    body = page.inner_text("body")
    assert "undefined" not in body and "NaN" not in body

    # The call is in the calls list, with its number from the caller ID.
    assert wait_for(lambda: any(call["state"] == "complete" for call in calls_json(data)), 10)
    page.goto(f"{base}/")
    rows = page.locator("table.calls tbody tr")
    assert rows.count() == 1 and "shop" in rows.first.inner_text()
    assert re.search(r"\+\d{9,}", rows.first.inner_text())


def test_ctrl_c_finalises_the_call_in_progress_and_stops_the_web_ui(demo):
    base, data, process, log = demo
    port = int(base.rsplit(":", 1)[1])
    assert wait_for(lambda: line_state(data, "shop") == "in_call", 15), log.read_text()
    time.sleep(1.0)                     # a second of the call on disk
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    output = log.read_text()
    assert "Traceback" not in output and "finalising calls in progress" in output
    assert not answers(port)                                    # the web UI stopped too
    assert read_live(data / "run") is None                      # nobody takes the demo for running
    assert list((data / SPOOL_DIR).iterdir()) == []             # every call finalised
    calls = calls_json(data)
    assert [call["state"] for call in calls] == ["interrupted"]
    assert calls[0]["line"] == "shop" and calls[0]["duration_s"] > 2.0 and (data / calls[0]["file"]).is_file()
    # What the README suggests next, from the folder above the data folder.
    assert "OK" in callrec("verify", "--data", data.name, cwd=data.parent).stdout


def test_a_looping_feeder_repeats_the_line_and_empties_each_play_once_heard(tmp_path):
    import os

    import numpy as np

    timeline = (np.arange(400) * 10).astype("<i2")            # every sample of a cycle tells where it is
    raw, fifo, out = tmp_path / "line.raw", tmp_path / "line.fifo", tmp_path / "line-out.raw"
    timeline.tofile(raw)
    os.mkfifo(fifo)
    out.write_bytes(np.full(40, 1, "<i2").tobytes())          # a first play, heard, then a second one
    out.with_name(f"{out.name}.0001").write_bytes(b"")
    feeder = subprocess.Popen([sys.executable, "-m", "appliance.feeder", str(raw), str(fifo), "--rate", "8000",
                               "--t0", repr(time.monotonic()), "--period-frames", "80", "--speed", "20",
                               "--line-out", str(out), "--loop"])
    try:
        with open(fifo, "rb") as line:
            heard = np.frombuffer(line.read(2 * 1600), dtype="<i2")
    finally:
        feeder.terminate()
        feeder.wait()
    heard = heard[80:]                                          # past the period that carried the play
    start = int(heard[0]) // 10
    assert np.array_equal(heard, np.tile(timeline, 5)[start:start + len(heard)])     # four cycles and more
    assert out.stat().st_size == 0                             # emptied, its name still taken


def test_a_pin_driver_with_a_period_plays_its_edges_again_until_stopped():
    from gpiozero import DigitalInputDevice
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.scenario import PinEdge
    from appliance.simulate import PinDriver

    factory = MockFactory()
    config = load_config(demo_path("appliance.toml"))
    hook = DigitalInputDevice(17, pull_up=True, pin_factory=factory)       # the shop's hook, active low
    hang_ups = []
    hook.when_deactivated = lambda: hang_ups.append(time.monotonic())
    driver = PinDriver(factory, config, [PinEdge(0.05, "shop", "hook", True), PinEdge(0.1, "shop", "hook", False)],
                       time.monotonic(), period=0.2)
    driver.start()
    time.sleep(0.9)
    driver.stopping.set()
    driver.join(1)
    assert not driver.is_alive() and len(hang_ups) in (4, 5)
    assert all(0.15 < b - a < 0.25 for a, b in zip(hang_ups, hang_ups[1:]))
    factory.reset()
