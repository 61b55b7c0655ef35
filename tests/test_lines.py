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
