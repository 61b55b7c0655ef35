"""`callrec doctor --identify`: which sound card and which pins belong to which analog line.

The technician lifts each line's handset in turn. Lifting it closes the loop, so the line's hook
input goes off-hook, and the exchange's dial tone reaches the card that taps that line: the pin
with the off-hook edge and the one card that hears audio belong to the line asked for. Both are
then written into the configuration file, whose comments and other keys stay as they were.
"""

import errno
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from appliance.config import Config, LineConfig, _pin_key, load_config
from appliance.errors import CallrecError
from appliance.lines import capture_name, playback_name, read_document, usb_sound_cards, write_config
from appliance.live import read_live

TIMEOUT_S = 60.0
HEARD_DBFS = -40.0      # a dial tone or a voice; an idle line's hiss is some 30 dB below
HEARD_WINDOW_S = 0.3    # the level is judged over this much of the latest audio
POLL_S = 0.02
# The pins that go with a line's hook input, moved with it to the line it is found on.
PIN_KEYS = ("hook_pin", "hook_active", "ring_pin", "ring_active")
# Each line's hook and ring inputs as the wiring guide (firmware-config/README.md) puts them: a
# card beyond the configured lines gets a line on the first pair not in use.
GUIDE_PINS = ((17, 27), (22, 23), (24, 25), (16, 20))


class IdentifyError(CallrecError):
    """The identification cannot go on: the message says why and what to do."""


@dataclass(frozen=True)
class Found:
    """One line's wiring as found: the card's USB port and the line whose hook pin went off-hook."""

    line: str
    port: str
    pins_of: LineConfig


class CardListener(threading.Thread):
    """Reads one capture PCM and keeps the level of its latest audio."""

    def __init__(self, port: str, device: str, rate: int, period_frames: int):
        import alsaaudio

        from appliance.analog.capture import open_capture

        super().__init__(name=f"identify-{port}", daemon=True)
        self.port, self.device = port, device
        try:
            self.pcm = open_capture(device, rate, 1, period_frames)
        except alsaaudio.ALSAAudioError as exc:
            raise IdentifyError(f"sound card {device} (USB port {port}) cannot be opened: {exc}") from None
        self.window = int(HEARD_WINDOW_S * rate) * 2
        self.latest = b""
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            length, chunk = self.pcm.read()
            if length > 0:
                self.latest = (self.latest + chunk[:length * 2])[-self.window:]
            elif length != -errno.EPIPE:
                time.sleep(POLL_S)

    def heard(self) -> bool:
        """Whether the card hears more than an idle line now."""
        from appliance.doctor import measure

        latest = self.latest
        return len(latest) == self.window and measure(latest)[0] > HEARD_DBFS

    def close(self) -> None:
        """Stop reading and close the card."""
        self.stopping.set()
        self.join(2.0)
        self.pcm.close()


def identify(config_path: Path, cards: dict[str, str] | None = None, pin_factory=None,
             timeout_s: float = TIMEOUT_S, say: Callable[[str], None] = print) -> list[Found]:
    """Ask for each line's handset in turn, find its card and hook pin, write them into the
    configuration file and return what was found. `cards` maps USB ports to capture PCMs (by
    default the USB sound cards present, by their names from firmware-config/asound.conf)."""
    from appliance.analog.hook import LineInputs

    config = load_config(config_path)
    if not config.line:
        raise IdentifyError(f"{config_path} has no analog line ([[line]]) to identify")
    if read_live(config.recorder.live_dir) is not None:
        raise IdentifyError("the recorder is running: it holds the sound cards and the GPIO pins. Stop it "
                            "first (sudo systemctl stop callrec-recorder), then start it again afterwards")
    if cards is None:
        cards = {port: capture_name(port) for port in usb_sound_cards()}
    if len(cards) < len(config.line):
        raise IdentifyError(f"{len(config.line)} line(s) configured but {len(cards)} USB sound card(s) "
                            f"found ({', '.join(cards) or 'none'}): plug in one card per line")
    added = _added_lines(config, len(cards) - len(config.line))
    for line in added:
        say(f"A line for a card beyond the configured ones: {line.name}, hook GPIO {line.hook_pin}, "
            f"ring GPIO {line.ring_pin} (as in the wiring guide).")
    lines = [*config.line, *added]
    rate = config.recorder.sample_rate
    listeners, inputs = [], {}
    try:
        for port, device in cards.items():
            listeners.append(CardListener(port, device, rate, rate * config.recorder.period_ms // 1000))
            listeners[-1].start()
        with warnings.catch_warnings():     # gpiozero names each pin library it tries
            warnings.simplefilter("ignore")
            for line in lines:
                inputs[line.name] = LineInputs(line.hook_pin, line.hook_active, pin_factory=pin_factory)
        found = []
        for number, line in enumerate(lines, 1):
            taken_ports = {f.port for f in found}
            taken_pins = {f.pins_of.name for f in found}
            say(f"Line {number} ({line.name}): lift its handset now (hang up the others).")
            found.append(_wait_for_line(number, line.name,
                                        [c for c in listeners if c.port not in taken_ports],
                                        {name: i for name, i in inputs.items() if name not in taken_pins},
                                        {other.name: other for other in lines}, timeout_s))
            say(f"  found: sound card in USB port {found[-1].port}, hook GPIO {found[-1].pins_of.hook_pin}")
    finally:
        for listener in listeners:
            listener.close()
        for one in inputs.values():
            one.close()
    _write(config_path, found)
    say("Written to " + str(config_path) + ":")
    for f in found:
        say(f"  line {f.line}: capture {capture_name(f.port)}, playback {playback_name(f.port)}, "
            f"hook GPIO {f.pins_of.hook_pin}" + (f", ring GPIO {f.pins_of.ring_pin}" if f.pins_of.ring_pin is not None else ""))
    return found


def _wait_for_line(number: int, name: str, listeners: list[CardListener], inputs: dict, lines: dict,
                   timeout_s: float) -> Found:
    """Wait for one hook pin to go off-hook and one card to hear audio, together."""
    was_off = {pin_line for pin_line, one in inputs.items() if one.off_hook()}
    lifted: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now_off = {pin_line for pin_line, one in inputs.items() if one.off_hook()}
        lifted |= now_off - was_off
        was_off &= now_off          # a handset hung up may be lifted again
        heard = [c.port for c in listeners if c.heard()]
        if len(lifted) > 1:
            raise IdentifyError(f"line {number} ({name}): the hook inputs of "
                                f"{' and '.join(_gpio(lines[p]) for p in sorted(lifted))} both went off-hook: "
                                "lift one handset at a time and run me again")
        if lifted and len(heard) > 1:
            raise IdentifyError(f"line {number} ({name}): the sound cards in USB ports {' and '.join(heard)} "
                                "both hear audio: keep the other lines quiet (handsets down) and run me again")
        if lifted and heard:
            return Found(name, heard[0], lines[next(iter(lifted))])
        time.sleep(POLL_S)
    if lifted:
        raise IdentifyError(f"line {number} ({name}): {_gpio(lines[next(iter(lifted))])} went off-hook but no "
                            f"sound card heard audio in {timeout_s:g} s: check the card's input cable and "
                            "capture level (alsamixer, F4)")
    raise IdentifyError(f"no handset lifted in {timeout_s:g} s on line {number} ({name}): check the hook "
                        "detector's wiring (pinctrl get shows the pin's level)")


def _added_lines(config: Config, count: int) -> list[LineConfig]:
    """`count` new lines on the wiring guide's pins that no line or LED uses yet, each with the
    first line's rules (its notice and purpose are written with it)."""
    used = {_pin_key(pin) for line in config.line for pin in (line.hook_pin, line.ring_pin, line.pause_button_pin,
            line.agreement_button_pin, line.private_button_pin, line.recording_led_pin) if pin is not None}
    used |= {_pin_key(config.recorder.fault_led_pin)} if config.recorder.fault_led_pin is not None else set()
    free = [pair for pair in GUIDE_PINS if not {str(pin) for pin in pair} & used]
    if count > len(free):
        raise IdentifyError(f"{count} more sound card(s) than lines, and the wiring guide's pins for only "
                            f"{len(free)} more line(s) are free: add a [[line]] table with its pins for each card")
    names = {line.name for line in config.line}
    numbers = (n for n in range(2, 100) if f"line{n}" not in names)
    return [config.line[0].model_copy(update={
                "name": f"line{next(numbers)}", "hook_pin": hook, "hook_active": "low", "ring_pin": ring,
                "ring_active": "low", "modem": None, "pause_button_pin": None, "agreement_button_pin": None,
                "private_button_pin": None, "recording_led_pin": None})
            for hook, ring in free[:count]]


def _gpio(line: LineConfig) -> str:
    return f"GPIO {line.hook_pin}"


def _write(config_path: Path, found: list[Found]) -> None:
    """Each line's card and pins into the configuration file, the rest of the file kept; an added
    line gets a table of its own after the others."""
    document = read_document(config_path)
    tables = {table["name"]: table for table in document["line"]}
    first = document["line"][0]
    for f in found:
        table = tables.get(f.line)
        if table is None:
            table = tomlkit.table()
            table.update({"name": f.line, "notice": first["notice"],
                          **({"purpose": first["purpose"]} if "purpose" in first else {})})
        table["capture"], table["playback"] = capture_name(f.port), playback_name(f.port)
        for key in PIN_KEYS:
            value = getattr(f.pins_of, key)
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        if f.line not in tables:
            table.add(tomlkit.nl())
            document["line"].append(table)
    write_config(config_path, document)
