"""Analog lines' sound cards by USB port: the names firmware-config/85-callrec-sound.rules gives
each USB sound card, the cards present, and the lines' wiring written into the configuration file.

A port is named as the kernel names the USB device in it (`1-1.2`: bus 1, port 2 of the hub on
port 1), so a card keeps its name across reboots, whatever order the devices come up in.
"""

import os
import re
from pathlib import Path

import tomlkit

from appliance.config import Config, format_validation_error, resolve_paths
from appliance.errors import ConfigError

SYSFS = Path("/sys")


def card_id(port: str) -> str:
    """The ALSA ID of the USB sound card in `port`, as 85-callrec-sound.rules gives it."""
    return "callrec_" + port.replace(".", "_")


def capture_name(port: str) -> str:
    """The capture PCM of the card in `port` (firmware-config/asound.conf)."""
    return f"callrec_capture:{card_id(port)}"


def playback_name(port: str) -> str:
    """The playback PCM of the card in `port` (firmware-config/asound.conf)."""
    return f"callrec_playback:{card_id(port)}"


def _usb_port(device: Path) -> str | None:
    """The port of the USB device above a sysfs device: the nearest ancestor with a `devpath`."""
    for folder in [device, *device.parents]:
        if (folder / "devpath").is_file() and (folder / "busnum").is_file():
            return folder.name
    return None


def usb_sound_cards(sysfs: Path = SYSFS) -> dict[str, str]:
    """The USB sound cards present: their ALSA ID by port."""
    cards = {}
    for card in sorted((sysfs / "class" / "sound").glob("card*")):
        device = card.resolve()
        if re.fullmatch(r"card\d+", card.name) and (port := _usb_port(device)) is not None:
            cards[port] = (device / "id").read_text().strip()
    return cards


def write_config(path: Path, document: tomlkit.TOMLDocument) -> None:
    """Validate `document` as the recorder would load it, then replace the file safely: a
    temporary file in the same folder, flushed to the disk, renamed over it (its mode kept).
    An invalid document raises ConfigError and leaves the file as it was."""
    from pydantic import ValidationError

    path = Path(path)
    try:
        resolve_paths(Config.model_validate(document.unwrap()), path)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(tomlkit.dumps(document))
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_document(path: Path) -> tomlkit.TOMLDocument:
    """The configuration file as written, comments and layout kept for writing it back."""
    try:
        return tomlkit.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomlkit.exceptions.TOMLKitError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None


def upgrade_legacy_names(path: Path, sysfs: Path = SYSFS) -> str:
    """After an upgrade: a line still on the one-card names of earlier versions (callrec_capture,
    callrec_playback, the card's ID "callrec") is given the port names of that card, found as the
    only USB sound card present. Returns what it did, for the installer's report."""
    document = read_document(path)
    legacy = [line for line in document.get("line", [])
              if line.get("capture") == "callrec_capture" or line.get("playback") == "callrec_playback"]
    if not legacy:
        return "nothing changed"
    cards = usb_sound_cards(sysfs)
    if len(legacy) != 1 or len(cards) != 1:
        return (f"nothing changed ({len(legacy)} line(s) on the names of one card, {len(cards)} USB sound "
                "card(s) present: run `sudo callrec doctor --identify` with the cards plugged in)")
    (port,) = cards
    line = legacy[0]
    line["capture"], line["playback"] = capture_name(port), playback_name(port)
    write_config(path, document)
    return f"line {line.get('name')}: sound card in USB port {port} ({capture_name(port)})"
