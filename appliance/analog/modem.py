"""Caller ID from a voice/data modem on a serial port, read with pyserial.

The modem only listens: it is told to report caller ID and never to answer. One thread owns the
port; it reports a `Ring` for every RING and a `CallerId` for every caller-ID block.

Dialects understood (spaces around '=' or ':' are optional):

- MCI/Bellcore formatted output, as AT+VCID=1, AT#CID=1 and AT%CCID=1 give it:
  `DATE = 0321`, `TIME = 1405`, `NMBR = 5551234` (also `DDN_NMBR`, `DDN`, `NBR`),
  `NAME = JOHN DOE`; `P` / `O` in NMBR or NAME for private / unavailable; `MESG = <hex>` for an
  MDMF parameter the modem did not decode (kept in `raw` only).
- ZyXEL-style: `TIME: 03-21 14:05`, `CALLER NUMBER: ...`, `CALLER'S NUMBER: ...`,
  `CALLER NAME: ...`, `REASON FOR NO CALLER NUMBER: P`, `REASON NO NAME = Private`,
  `DATE TIME=03/21 14:05`, `CallerID: ...`.
- ETSI/3GPP `+CLIP: "+3225551234",145,,,"JOHN DOE",0` (after AT+CLIP=1); the last field says why
  the number is missing (1 withheld, 2 not available).

When a block ends: a block is every caller-ID line since the previous block ended. It ends, and
one `CallerId` is reported, at the first of:

- a RING (the `CallerId` is reported before that `Ring`);
- `block_gap_s` without a caller-ID line (modems send a block in one burst once its checksum is
  good, and the next ring is seconds away, so this only costs that much latency);
- a DATE, TIME or +CLIP line when the block already has one: the next call's data has begun.

The order of lines inside a block is not relied on: manuals allow any order and Bell Canada sends
NAME before DDN_NMBR. A block with only some fields (many lines send the number alone) is still
reported. A modem with +CLIP repeats it at every ring, so such a call brings one `CallerId` per
ring.
"""

import csv
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import serial

from appliance.service import Backoff
from appliance.errors import HardwareError

log = logging.getLogger(__name__)

INIT_COMMANDS = ("ATZ", "ATE0")
CID_COMMANDS = ("AT+VCID=1", "AT#CID=1", "AT%CCID=1", "AT+CLIP=1")  # tried in order until one is OK
BAUDRATE = 115200
REPLY_TIMEOUT_S = 3.0       # ATZ takes about a second on some modems
HEALTH_INTERVAL_S = 30.0
BLOCK_GAP_S = 0.5
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
POLL_S = 0.1
MAX_LINE = 256              # longer without a line end is noise, not a modem line


class ModemNotAnswering(HardwareError):
    """The modem did not reply to an AT command in time."""


@dataclass(frozen=True)
class Ring:
    """The modem reported RING at monotonic time `t`."""

    t: float


@dataclass(frozen=True)
class CallerId:
    """One caller-ID block. `t`: monotonic time of its first line.

    `number`: digits as sent, separators removed (a leading '+' kept), or None; `number_reason`
    says why it is missing ("private", "unavailable", or the modem's own words in lower case).
    `date` (usually MMDD, no year) and `time` (HHMM) are the exchange's local time as sent; a
    combined "03-21 14:05" is split into both.
    `raw`: the block's caller-ID lines as received, MESG lines included.
    """

    t: float
    number: str | None
    name: str | None
    date: str | None
    time: str | None
    raw: tuple[str, ...]
    number_reason: str | None = None
    name_reason: str | None = None


Event = Ring | CallerId

_KEYS = {
    "DATE": "DATE", "TIME": "TIME", "DATE TIME": "TIME",
    "NMBR": "NMBR", "DDN_NMBR": "NMBR", "DDN": "NMBR", "NBR": "NMBR",
    "CALLER NUMBER": "NMBR", "CALLER'S NUMBER": "NMBR", "CALLERID": "NMBR",
    "NAME": "NAME", "CALLER NAME": "NAME",
    "REASON FOR NO CALLER NUMBER": "NMBR_REASON",
    "REASON FOR NO CALLER NAME": "NAME_REASON", "REASON NO NAME": "NAME_REASON",
    "MESG": "MESG",
    "+CLIP": "CLIP",
}
_REASONS = {
    "P": "private", "PRIVATE": "private", "ANONYMOUS": "private", "WITHHELD": "private",
    "RESTRICTED": "private",
    "O": "unavailable", "OUT OF AREA": "unavailable", "OUT-OF-AREA": "unavailable",
    "UNAVAILABLE": "unavailable", "NOT AVAILABLE": "unavailable",
}
_CLIP_REASONS = {"1": "private", "2": "unavailable"}

_EDGES = re.compile(r"^[^!-~]+|[^!-~]+$")     # anything but visible ASCII at either end
_PRINTABLE = re.compile(r"[ -~]+")
_PAIR = re.compile(r"([A-Za-z+][A-Za-z_' ]*?)\s*[=:]\s*(.*)")
_RING = re.compile(r"RING(?: [0-9A-Z])?")     # "RING A" / "RING 1": distinctive ringing
_DATE = re.compile(r"\d{4}(?:\d{2}){0,2}")
_TIME = re.compile(r"(\d{4})|(\d\d)[-/](\d\d) (\d\d):(\d\d)")
_NUMBER = re.compile(r"\+?[0-9*#() .-]+")
_NUMBER_SEPARATORS = re.compile(r"[() .-]")
_WORDS = re.compile(r"[A-Za-z][A-Za-z -]*")
_HEX = re.compile(r"[0-9A-Fa-f ]+")
_CLIP = re.compile(r'"[0-9+*#]*"\s*(?:,.*)?')
_EOL = re.compile(rb"[\r\n]")


def _clean(line: str) -> str:
    return _EDGES.sub("", line)


def _reason(text: str) -> str | None:
    return _REASONS.get(text.strip().upper())


def _valid(key: str, value: str) -> bool:
    if key == "DATE":
        return bool(_DATE.fullmatch(value))
    if key == "TIME":
        return bool(_TIME.fullmatch(value))
    if key == "NMBR":
        is_number = _NUMBER.fullmatch(value) and re.search(r"\d", value)
        return bool(is_number) or _reason(value) is not None
    if key == "NAME":
        return "=" not in value     # a name holding '=' is two lines run together
    if key in ("NMBR_REASON", "NAME_REASON"):
        return bool(_WORDS.fullmatch(value))
    if key == "MESG":
        return bool(_HEX.fullmatch(value))
    return bool(_CLIP.fullmatch(value))


def parse_line(line: str) -> tuple[str, str] | None:
    """Parse one modem line into (key, value), or None if it is not a caller-ID line or RING.

    Keys: "RING" (value ""), "DATE", "TIME", "NMBR", "NAME", "NMBR_REASON", "NAME_REASON",
    "MESG" and "CLIP" (the text after "+CLIP:"). Values are stripped but otherwise as sent. Noise
    at either end of the line is dropped; a line with a non-ASCII or control character inside, an
    unknown key, an empty value or a value of the wrong shape for its key is refused.
    """
    text = _clean(line)
    if not text or not _PRINTABLE.fullmatch(text):
        return None
    if _RING.fullmatch(text):
        return "RING", ""
    match = _PAIR.fullmatch(text)
    if match is None:
        return None
    key = _KEYS.get(match.group(1).upper())
    value = match.group(2).strip()
    if key is None or not value or not _valid(key, value):
        return None
    return key, value


class _Block:
    """The caller-ID lines of one block so far."""

    def __init__(self, t: float):
        self.first = self.last = t
        self.seen: set[str] = set()
        self.raw: list[str] = []
        self.number: str | None = None
        self.name: str | None = None
        self.date: str | None = None
        self.time: str | None = None
        self.number_reason: str | None = None
        self.name_reason: str | None = None

    def add(self, key: str, value: str, text: str, t: float) -> None:
        self.seen.add(key)
        self.raw.append(text)
        self.last = t
        if key == "DATE":
            self.date = value
        elif key == "TIME":
            self._add_time(value)
        elif key == "NMBR":
            self._add_number(value, _reason(value))
        elif key == "NMBR_REASON":
            self._add_number("", _reason(value) or value.lower())
        elif key == "NAME":
            self._add_name(value, _reason(value))
        elif key == "NAME_REASON":
            self._add_name("", _reason(value) or value.lower())
        elif key == "CLIP":
            self._add_clip(value)

    def _add_time(self, value: str) -> None:
        hhmm, month, day, hour, minute = _TIME.fullmatch(value).groups()
        if hhmm is not None:
            self.time = hhmm
            return
        self.time = hour + minute
        if self.date is None:
            self.date = month + day

    def _add_number(self, value: str, reason: str | None) -> None:
        self._add("number", _NUMBER_SEPARATORS.sub("", value), reason)

    def _add_name(self, value: str, reason: str | None) -> None:
        self._add("name", value, reason)

    def _add(self, field: str, value: str, reason: str | None) -> None:
        # The first number or name of a block wins: some exchanges follow the number with
        # "NMBR = O" (as NCID notes), which must not erase it.
        if getattr(self, field) is not None or getattr(self, f"{field}_reason") is not None:
            return
        if reason is not None:
            setattr(self, f"{field}_reason", reason)
        else:
            setattr(self, field, value)

    def _add_clip(self, value: str) -> None:
        fields = next(csv.reader([value], skipinitialspace=True))
        number = fields[0]
        validity = fields[5].strip() if len(fields) > 5 else ""
        if number:
            self._add_number(number, None)
        elif validity in _CLIP_REASONS:
            self._add_number("", _CLIP_REASONS[validity])
        if len(fields) > 4 and fields[4].strip():
            self._add_name(fields[4].strip(), None)

    def event(self) -> CallerId:
        return CallerId(self.first, self.number, self.name, self.date, self.time, tuple(self.raw),
                        self.number_reason, self.name_reason)


class CallerIdParser:
    """Accumulates modem lines into caller-ID blocks (see the module docstring for when one ends).

    Plain code with no I/O: feed it lines with their monotonic times, and poll it for the quiet gap.
    """

    _HEADS = ("DATE", "TIME", "CLIP")   # a second one of these begins the next call's block

    def __init__(self, gap_s: float = BLOCK_GAP_S):
        self.gap_s = gap_s
        self._block: _Block | None = None

    @property
    def pending(self) -> bool:
        """Is a block open (caller-ID lines received and not yet reported)?"""
        return self._block is not None

    def feed(self, line: str, t: float) -> list[Event]:
        """Take a line received at monotonic time `t`; return the events it completes, in order."""
        parsed = parse_line(line)
        if parsed is None:
            return []
        key, value = parsed
        events: list[Event] = []
        repeated = self._block is not None and key in self._HEADS and key in self._block.seen
        if key == "RING" or repeated:
            block = self.flush()
            if block is not None:
                events.append(block)
        if key == "RING":
            events.append(Ring(t))
            return events
        if self._block is None:
            self._block = _Block(t)
        self._block.add(key, value, _clean(line), t)
        return events

    def poll(self, now: float) -> CallerId | None:
        """Return the open block once `gap_s` has passed since its last line, else None."""
        if self._block is None or now - self._block.last < self.gap_s:
            return None
        return self.flush()

    def deadline(self) -> float | None:
        """When `poll` will report the open block if no line comes, or None if none is open."""
        return None if self._block is None else self._block.last + self.gap_s

    def flush(self) -> CallerId | None:
        """End the open block now and return it (None if none is open)."""
        block, self._block = self._block, None
        return None if block is None else block.event()


def _reply(line: str) -> str | None:
    text = _clean(line)
    if text == "OK":
        return "OK"
    if text == "ERROR" or text.startswith(("+CME ERROR", "+CMS ERROR")):
        return "ERROR"
    return None


class _Stopped(Exception):
    """stop() was called: unwind the session quietly."""


class CallerIdModem(threading.Thread):
    """Reads RING and caller ID from a modem for as long as the recorder runs.

    `on_event(event)` is called on this thread with each `Ring` and `CallerId`; an exception from
    it is logged and the thread goes on. The port is opened exclusively and initialised with
    `init_commands` (an ERROR to one is logged and ignored), then with the first of `cid_commands`
    the modem accepts (`cid_command` tells which; None if it refused them all: RING is then still
    reported). A modem that is silent for `health_interval_s` is sent "AT"; no reply within
    `reply_timeout_s`, or a port error (unplugged), closes the port and reopens it with back-off
    from `retry_first_s` doubling to `retry_max_s`, initialising it again. `connected` is set
    while the modem is initialised; `last_error` keeps the last fault (it is not cleared when the
    modem comes back). All times are in seconds.
    """

    def __init__(self, device: str, on_event: Callable[[Event], None], baudrate: int = BAUDRATE,
                 init_commands: Sequence[str] = INIT_COMMANDS,
                 cid_commands: Sequence[str] = CID_COMMANDS, *,
                 reply_timeout_s: float = REPLY_TIMEOUT_S,
                 health_interval_s: float = HEALTH_INTERVAL_S, block_gap_s: float = BLOCK_GAP_S,
                 retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S,
                 poll_s: float = POLL_S):
        super().__init__(name=f"modem-{device}", daemon=True)
        self.device = device
        self.on_event = on_event
        self.baudrate = baudrate
        self.init_commands = tuple(init_commands)
        self.cid_commands = tuple(cid_commands)
        self.reply_timeout_s = reply_timeout_s
        self.health_interval_s = health_interval_s
        self.block_gap_s = block_gap_s
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.poll_s = poll_s
        self.connected = threading.Event()
        self.last_error: Exception | None = None
        self.cid_command: str | None = None
        self._parser = CallerIdParser(block_gap_s)
        self._stopping = threading.Event()
        self._port: serial.Serial | None = None
        self._pending = b""
        self._last_byte = 0.0
        self._last_heard = 0.0
        self._ready = False         # this session got through the init
        self._failing = False       # in an outage that was already logged
        self._ever_ready = False

    def stop(self) -> None:
        """Ask the thread to end; it closes the port and ends within `poll_s` or so."""
        self._stopping.set()

    # -- the thread --------------------------------------------------------------------------------

    def run(self) -> None:
        """Open, initialise and read the modem until stop(); reopen it after any fault."""
        backoff = Backoff(self.retry_first_s, self.retry_max_s)
        while not self._stopping.is_set():
            try:
                self._session()
            except _Stopped:
                break
            except Exception as exc:
                self.last_error = exc
                if self._ready:
                    backoff.reset()
                self._log_fault(exc)
            self._stopping.wait(backoff.next())

    def _log_fault(self, exc: Exception) -> None:
        if self._failing:
            log.debug("caller-ID modem %s still unusable: %s", self.device, exc)
            return
        self._failing = True
        if isinstance(exc, OSError):
            log.error("caller-ID modem %s: %s; reopening, retrying every %g s at most",
                      self.device, exc, self.retry_max_s)
        else:
            log.exception("caller-ID modem %s failed; reopening", self.device)

    def _session(self) -> None:
        self._ready = False
        with serial.Serial(self.device, self.baudrate, timeout=self.poll_s,
                           write_timeout=self.reply_timeout_s, exclusive=True) as port:
            self._port, self._pending = port, b""
            try:
                port.reset_input_buffer()
                self._initialise()
                self._ready = True
                if self._failing:
                    log.warning("caller-ID modem %s is back (%s)", self.device, self.cid_command)
                elif not self._ever_ready:
                    log.info("caller-ID modem %s ready (%s)", self.device, self.cid_command)
                self._failing, self._ever_ready = False, True
                self.connected.set()
                self._listen()
            except _Stopped:
                raise
            except Exception as exc:
                self.last_error = exc   # before `connected` clears, so whoever sees that sees why
                raise
            finally:
                self.connected.clear()
                self._port = None
                block = self._parser.flush()
                if block is not None:
                    self._emit(block)

    def _initialise(self) -> None:
        for command in self.init_commands:
            if self._command(command) == "ERROR":
                log.warning("caller-ID modem %s refused %s", self.device, command)
        self.cid_command = None
        for command in self.cid_commands:
            if self._command(command) == "OK":
                self.cid_command = command
                return
            log.debug("caller-ID modem %s refused %s", self.device, command)
        log.warning("caller-ID modem %s accepts none of %s: only RING will be reported",
                    self.device, ", ".join(self.cid_commands))

    def _listen(self) -> None:
        while True:
            self._pump()
            # An open block means the modem is talking; an AT now could cut into its report.
            if (time.monotonic() - self._last_heard >= self.health_interval_s
                    and not self._parser.pending):
                self._command("AT")

    def _command(self, command: str) -> str:
        """Send an AT command; return "OK" or "ERROR", or raise ModemNotAnswering."""
        self._port.write(command.encode("ascii") + b"\r")
        deadline = time.monotonic() + self.reply_timeout_s
        while time.monotonic() < deadline:
            reply = self._pump()
            if reply is not None:
                return reply
        raise ModemNotAnswering(f"no reply to {command} within {self.reply_timeout_s:g} s")

    def _pump(self) -> str | None:
        """Read for up to `poll_s` and report what the lines complete; return a command reply."""
        if self._stopping.is_set():
            raise _Stopped
        line = self._next_line()
        now = time.monotonic()
        reply = None
        if line is not None:
            self._last_heard = now
            reply = _reply(line)
            if reply is None:
                for event in self._parser.feed(line, now):
                    self._emit(event)
        block = self._parser.poll(now)
        if block is not None:
            self._emit(block)
        return reply

    def _next_line(self) -> str | None:
        """The next line from the modem, or None if none is complete after one read."""
        line = self._take_line()
        if line is not None:
            return line
        data = self._port.read(self._port.in_waiting or 1)
        now = time.monotonic()
        if data:
            self._pending += data
            self._last_byte = now
        elif self._pending and now - self._last_byte >= self.block_gap_s:
            # A modem sends a line in one go: a fragment left without a line end is a truncated
            # line, and joining it to the next line would spoil that one too.
            log.debug("caller-ID modem %s: dropped a truncated line of %d bytes", self.device, len(self._pending))
            self._pending = b""
        line = self._take_line()
        if line is None and len(self._pending) > MAX_LINE:
            log.debug("caller-ID modem %s: dropped %d bytes without a line end", self.device,
                      len(self._pending))
            self._pending = b""
        return line

    def _take_line(self) -> str | None:
        while (match := _EOL.search(self._pending)) is not None:
            raw, self._pending = self._pending[:match.start()], self._pending[match.end():]
            if raw.strip():
                return raw.decode("ascii", errors="replace")
        return None

    def _emit(self, event: Event) -> None:
        try:
            self.on_event(event)
        except Exception:
            log.exception("the caller-ID handler failed on a %s event", type(event).__name__)
