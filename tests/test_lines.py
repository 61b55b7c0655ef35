"""Several analog lines without hand edits: the installed udev rules name each USB sound card and
modem by the USB port it is plugged into, run by the real udev (`udevadm test`) against device
trees that umockdev makes up; `callrec doctor --identify` finds each line's card and hook pin as
its handset is lifted (gpiozero's MockFactory pins, FIFO-fed ALSA file-plugin PCMs), writes them
into the configuration, and the recorder then records one call on each line through it."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import RATE, feed, recording, stop, tone, tone_level, wait_for

REPO = Path(__file__).resolve().parent.parent
RULES = ("85-callrec-sound.rules", "85-callrec-modem.rules")
USB_ROOT = "/devices/platform/soc/fe980000.usb/usb1"

needs_umockdev = pytest.mark.skipif(shutil.which("umockdev-run") is None or shutil.which("unshare") is None
                                    or os.geteuid() != 0,
                                    reason="needs root, unshare and umockdev (apt-get install umockdev)")


def usb_device(port: str, vendor: str, product: str) -> str:
    """A USB device in `port` (e.g. 1-1.2) and its first interface, as umockdev describes them."""
    hubs = port.split("-")[1].split(".")
    path = f"{USB_ROOT}/" + "/".join(f"1-{'.'.join(hubs[:depth])}" for depth in range(1, len(hubs) + 1))
    return (f"P: {path}\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\nA: busnum=1\n"
            f"A: devpath={port.split('-', 1)[1]}\nA: idVendor={vendor}\nA: idProduct={product}\n\n"
            f"P: {path}/{port}:1.0\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_interface\n\n"), f"{path}/{port}:1.0"


def sound_card(port: str, number: int) -> tuple[str, str]:
    """A USB sound card as the kernel registers it: card<number> under the USB interface."""
    text, interface = usb_device(port, "0d8c", "0014")
    card = f"{interface}/sound/card{number}"
    return text + f"P: {card}\nE: SUBSYSTEM=sound\nA: id=Device\nA: number={number}\n\n", card


def modem(port: str, number: int, vendor: str = "0baf", product: str = "0303") -> tuple[str, str]:
    """A USB modem (CDC-ACM) as the kernel registers it: ttyACM<number> under the USB interface."""
    text, interface = usb_device(port, vendor, product)
    tty = f"{interface}/tty/ttyACM{number}"
    return text + f"P: {tty}\nE: SUBSYSTEM=tty\nE: DEVNAME=/dev/ttyACM{number}\nE: MAJOR=166\nE: MINOR={number}\n\n", tty


def udev_add(tmp_path: Path, devices: list[tuple[str, str]]) -> dict[str, str]:
    """Run the installed rules (only those) on each device's "add" event, as udev would at boot.
    Returns, by sysfs path, the ALSA ID a card was given or the /dev links a tty got."""
    tree = tmp_path / "devices.umockdev"
    tree.write_text("".join(text for text, _ in devices))
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    for name in RULES:
        shutil.copy(REPO / "firmware-config" / name, rules / name)
    script = ('for d in /usr/lib/udev/rules.d /etc/udev/rules.d /run/udev/rules.d; do '
              '[ -d "$d" ] && mount -t tmpfs tmpfs "$d"; done; cp "$1"/*.rules /etc/udev/rules.d/; shift; '
              'for dev; do echo "@@device $dev"; umockdev-run -d "$TREE" -- udevadm test --action=add "/sys$dev" 2>&1; done')
    out = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(rules), *(path for _, path in devices)],
                         env={**os.environ, "TREE": str(tree)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    named = {}
    for block in out.stdout.split("@@device ")[1:]:
        path = block.splitlines()[0]
        written = re.findall(r"ATTR '\S+/id' writing '([^']*)'", block)
        links = re.search(r"^DEVLINKS=(.*)$", block, re.MULTILINE)
        named[path] = written[-1] if written else (links.group(1) if links else None)
    return named


@needs_umockdev
def test_two_usb_sound_cards_are_named_by_their_ports_whatever_order_they_come_up_in(tmp_path):
    (a, card_a), (b, card_b) = sound_card("1-1.2", 1), sound_card("1-1.3", 2)
    first = udev_add(tmp_path, [(a, card_a), (b, card_b)])
    assert first == {card_a: "callrec_1-1_2", card_b: "callrec_1-1_3"}
    # Next boot: the card in port 1-1.3 comes up first and gets card number 1.
    (a, card_a), (b, card_b) = sound_card("1-1.2", 2), sound_card("1-1.3", 1)
    assert udev_add(tmp_path, [(b, card_b), (a, card_a)]) == {card_a: "callrec_1-1_2", card_b: "callrec_1-1_3"}


@needs_umockdev
def test_two_usb_modems_are_named_by_their_ports_and_kept_from_modemmanager(tmp_path):
    (a, tty_a), (b, tty_b) = modem("1-1.4", 0), modem("1-1.5", 1, "1234", "5678")
    named = udev_add(tmp_path, [(a, tty_a), (b, tty_b)])
    assert "/dev/callrec-modem-1-1.4" in named[tty_a].split() and "/dev/callrec-modem" in named[tty_a].split()
    assert named[tty_b].split() == ["/dev/callrec-modem-1-1.5"]     # a modem the rules do not know by make
    # Swapped: the other one is ttyACM0 now; the port names stay.
    (a, tty_a), (b, tty_b) = modem("1-1.4", 1), modem("1-1.5", 0, "1234", "5678")
    swapped = udev_add(tmp_path, [(b, tty_b), (a, tty_a)])
    assert "/dev/callrec-modem-1-1.4" in swapped[tty_a].split()
    assert swapped[tty_b].split() == ["/dev/callrec-modem-1-1.5"]


LEGACY_CONFIG = """# The shop's recorder.
[recorder]
data_dir = "data"

[[line]]
name = "shop"
hook_pin = 17
hook_active = "low"
# The USB sound card, by the stable names from /etc/alsa/conf.d/50-callrec.conf.
capture = "callrec_capture"
playback = "callrec_playback"
notice = "{notice}"
"""


def upgrade(config: Path, tree: Path) -> str:
    """The installer's step for the lines, on a machine whose /sys holds the devices of `tree`."""
    out = subprocess.run(["umockdev-run", "-d", str(tree), "--", sys.executable, "-c",
                          "import sys; from appliance.lines import upgrade_legacy_names; "
                          "print(upgrade_legacy_names(sys.argv[1]))", str(config)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@needs_umockdev
def test_an_upgrade_moves_the_one_card_line_onto_its_ports_names_and_a_second_run_changes_nothing(tmp_path):
    from appliance.config import demo_path, load_config

    config = tmp_path / "appliance.toml"
    config.write_text(LEGACY_CONFIG.format(notice=demo_path("notice-en.wav")))
    config.chmod(0o660)
    text, _ = sound_card("1-1.2", 1)
    tree = tmp_path / "one-card.umockdev"
    tree.write_text(text.replace("A: id=Device", "A: id=callrec"))     # as the earlier rule named it
    assert upgrade(config, tree) == "line shop: sound card in USB port 1-1.2 (callrec_capture:callrec_1-1_2)"
    line = load_config(config).line[0]
    assert (line.capture, line.playback) == ("callrec_capture:callrec_1-1_2", "callrec_playback:callrec_1-1_2")
    written = config.read_text()
    assert "# The shop's recorder." in written and "# The USB sound card, by the stable names" in written
    assert config.stat().st_mode & 0o777 == 0o660
    assert upgrade(config, tree) == "nothing changed"
    assert config.read_text() == written


@needs_umockdev
def test_an_upgrade_with_two_cards_present_leaves_the_line_and_says_to_identify(tmp_path):
    from appliance.config import demo_path

    config = tmp_path / "appliance.toml"
    config.write_text(LEGACY_CONFIG.format(notice=demo_path("notice-en.wav")))
    before = config.read_text()
    tree = tmp_path / "two-cards.umockdev"
    tree.write_text(sound_card("1-1.2", 1)[0] + sound_card("1-1.3", 2)[0])
    said = upgrade(config, tree)
    assert said.startswith("nothing changed") and "callrec doctor --identify" in said and "2 USB sound card(s)" in said
    assert config.read_text() == before


TWO_LINES = """# Two lines: which card and which pins are whose is for `callrec doctor --identify` to find.
[recorder]
data_dir = "data"

[[line]]
name = "shop"
hook_pin = 17
hook_active = "low"
ring_pin = 27
capture = "cap1"        # the card: written by --identify
playback = "play1"
notice = "{notice}"
outgoing = "off"

[[line]]
name = "office"
hook_pin = 18
hook_active = "low"
ring_pin = 22
capture = "cap2"
playback = "play2"
notice = "{notice}"
outgoing = "off"
"""
PORTS = ("1-1.2", "1-1.3")


def alsa_cards(folder: Path, timelines: dict[str, np.ndarray]) -> tuple[str, list]:
    """The names firmware-config/asound.conf gives each card (callrec_capture:<ID>,
    callrec_playback:<ID>) as ALSA file-plugin PCMs: a card's capture reads a FIFO that a feeder
    fills with its timeline (float samples, hiss after it) in real time, from now. Returns the
    value for ALSA_CONFIG_PATH and the feeders."""
    from appliance.lines import card_id
    from appliance.simulate import ALSA_BASE_CONFIG

    asoundrc = folder / "asoundrc"
    asoundrc.write_text(f"""
pcm.callrec_capture {{
    @args [ CARD ]
    @args.CARD {{ type string }}
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile {{ @func concat strings [ "{folder}/" $CARD ".fifo" ] }}
    format "raw"
}}
pcm.callrec_playback {{
    @args [ CARD ]
    @args.CARD {{ type string }}
    type file
    slave.pcm {{ type null }}
    file {{ @func concat strings [ "{folder}/" $CARD ".out" ] }}
    format "raw"
    truncate false
}}
""")
    feeders = []
    for port, samples in timelines.items():
        fifo = folder / f"{card_id(port)}.fifo"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
        raw = folder / f"{card_id(port)}.raw"
        raw.write_bytes((np.clip(samples, -1, 0.999) * 32768).astype("<i2").tobytes())
        feeders.append(feed(raw, fifo))
    return f"{ALSA_BASE_CONFIG}:{asoundrc}", feeders


def timeline(*tones: tuple[float, float, float]) -> np.ndarray:
    """Hiss-free silence with tones (start s, end s, Hz): the handset lifted, the line's tone heard."""
    samples = np.zeros(int(max(end for _, end, _ in tones) * RATE))
    for start, end, freq in tones:
        samples[int(start * RATE):int(end * RATE)] = tone(freq, end - start, 0.4)
    return samples


def drive(factory, edges: list[tuple[float, int, bool]]) -> threading.Thread:
    """Drive mock pins low (off-hook) or high at (seconds from now, pin, low)."""
    t0 = time.monotonic()

    def run():
        for at, pin, low in edges:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            factory.pin(pin).drive_low() if low else factory.pin(pin).drive_high()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def two_lines(tmp_path, monkeypatch):
    """A two-line configuration whose pins are wired the other way round from what it says, and a
    function that starts the simulated cards: yields (config path, start_cards, MockFactory)."""
    from gpiozero.pins.mock import MockFactory

    from appliance.config import demo_path

    config = tmp_path / "appliance.toml"
    config.write_text(TWO_LINES.format(notice=demo_path("notice-en.wav")))
    feeders, factory = [], MockFactory()

    def start_cards(timelines):
        alsa, started = alsa_cards(tmp_path, timelines)
        monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
        feeders.extend(started)
    yield config, start_cards, factory
    stop(feeders)
    factory.reset()


def identify(config: Path, factory, timeout_s: float = 10.0) -> tuple[list, list[str]]:
    from appliance.identify import identify as run
    from appliance.lines import capture_name

    said = []
    found = run(config, {port: capture_name(port) for port in PORTS}, factory, timeout_s, said.append)
    return found, said


def test_identify_finds_each_lines_card_and_pins_and_the_recorder_records_each_line_through_them(two_lines):
    from appliance.config import load_config
    from appliance.recorder import Recorder

    config, start_cards, factory = two_lines
    # The shop's handset is on the pins configured for the office (18, ring 22) and its line on
    # the card in port 1-1.3; the office's on 17 and the card in 1-1.2.
    start_cards({"1-1.3": timeline((1.0, 3.0, 425)), "1-1.2": timeline((3.5, 5.5, 425))})
    drive(factory, [(1.0, 18, True), (3.0, 18, False), (3.5, 17, True), (5.5, 17, False)])
    found, said = identify(config, factory)
    assert said[0] == "Line 1 (shop): lift its handset now (hang up the others)."
    assert said[2] == "Line 2 (office): lift its handset now (hang up the others)."
    assert [(f.line, f.port, f.pins_of.hook_pin) for f in found] == [("shop", "1-1.3", 18), ("office", "1-1.2", 17)]
    lines = {line.name: line for line in load_config(config).line}
    assert (lines["shop"].capture, lines["shop"].playback) == ("callrec_capture:callrec_1-1_3",
                                                             "callrec_playback:callrec_1-1_3")
    assert (lines["shop"].hook_pin, lines["shop"].ring_pin) == (18, 22)
    assert (lines["office"].capture, lines["office"].hook_pin, lines["office"].ring_pin) == (
        "callrec_capture:callrec_1-1_2", 17, 27)
    written = config.read_text()
    assert "# Two lines: which card" in written and "# the card: written by --identify" in written
    assert any("line shop: capture callrec_capture:callrec_1-1_3" in line for line in said)

    # The recorder, from the written file: a 440 Hz call on the shop's line, 660 Hz on the office's.
    start_cards({"1-1.3": timeline((0.5, 3.5, 440)), "1-1.2": timeline((0.5, 3.5, 660))})
    recorder = Recorder(load_config(config), pin_factory=factory)
    recorder.start()
    try:
        drive(factory, [(1.0, 18, True), (1.0, 17, True), (3.0, 18, False), (3.0, 17, False)]).join()
        assert wait_for(lambda: len(recorder.catalogue.calls("state != 'recording'")) == 2, 10)
        calls = {call["line"]: call for call in recorder.catalogue.calls()}
    finally:
        recorder.stop()
    data = config.parent / "data"
    shop, office = recording(data, calls["shop"]), recording(data, calls["office"])
    assert tone_level(shop, 440) > 0.2 and tone_level(shop, 660) < 0.02
    assert tone_level(office, 660) > 0.2 and tone_level(office, 440) < 0.02


def test_identify_says_which_line_had_no_handset_lifted_and_changes_nothing(two_lines):
    from appliance.identify import IdentifyError

    config, start_cards, factory = two_lines
    before = config.read_text()
    start_cards({"1-1.3": timeline((0.5, 2.0, 425)), "1-1.2": np.zeros(RATE)})
    drive(factory, [(0.5, 18, True), (2.0, 18, False)])
    with pytest.raises(IdentifyError, match=r"no handset lifted in 4 s on line 2 \(office\)"):
        identify(config, factory, timeout_s=4.0)
    assert config.read_text() == before


def test_identify_refuses_two_cards_hearing_audio_at_once(two_lines):
    from appliance.identify import IdentifyError

    config, start_cards, factory = two_lines
    before = config.read_text()
    start_cards({"1-1.3": timeline((0.5, 3.0, 425)), "1-1.2": timeline((0.5, 3.0, 425))})
    drive(factory, [(1.0, 17, True)])
    with pytest.raises(IdentifyError, match=r"line 1 \(shop\): the sound cards in USB ports 1-1.\d and 1-1.\d both "
                                            r"hear audio"):
        identify(config, factory)
    assert config.read_text() == before


def test_identify_does_not_run_while_the_recorder_does(two_lines):
    from appliance.config import load_config
    from appliance.live import LIVE_NAME

    config, _, _ = two_lines
    live = load_config(config).recorder.live_dir
    live.mkdir(parents=True)
    (live / LIVE_NAME).write_text('{"pid": 1, "lines": []}')
    before = config.read_text()
    out = subprocess.run([sys.executable, "-m", "appliance", "doctor", "--identify", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "the recorder is running: it holds the sound cards and the GPIO pins. Stop it first" in out.stderr
    assert config.read_text() == before


def test_identify_adds_a_line_on_the_wiring_guides_pins_for_a_card_beyond_the_configured_lines(two_lines):
    from appliance.config import load_config

    config, start_cards, factory = two_lines
    one_line = config.read_text().split("\n[[line]]\nname = \"office\"")[0]
    config.write_text(one_line)
    start_cards({"1-1.2": timeline((1.0, 3.0, 425)), "1-1.3": timeline((3.5, 5.5, 425))})
    drive(factory, [(1.0, 17, True), (3.0, 17, False), (3.5, 22, True), (5.5, 22, False)])
    found, said = identify(config, factory)
    assert said[0] == "A line for a card beyond the configured ones: line2, hook GPIO 22, ring GPIO 23 (as in the wiring guide)."
    assert [(f.line, f.port) for f in found] == [("shop", "1-1.2"), ("line2", "1-1.3")]
    shop, line2 = load_config(config).line
    assert (shop.capture, shop.hook_pin, shop.ring_pin) == ("callrec_capture:callrec_1-1_2", 17, 27)
    assert (line2.capture, line2.playback) == ("callrec_capture:callrec_1-1_3", "callrec_playback:callrec_1-1_3")
    assert (line2.hook_pin, line2.hook_active, line2.ring_pin, line2.notice) == (22, "low", 23, shop.notice)
    assert line2.outgoing == "announce" and line2.modem is None      # the defaults: only the needed keys written
    assert '\n[[line]]\nname = "line2"\nnotice = ' in config.read_text()
