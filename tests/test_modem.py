"""The caller-ID modem through a real pseudo-terminal: a fake modem on the master side answers AT
commands as a given modem would and sends RING and caller-ID lines; the module under test opens the
slave side by its path, as it opens /dev/callrec-modem."""

import logging
import os
import pty
import queue
import select
import threading
import time
import tty
from unittest.mock import ANY

import pytest
import serial

from appliance.analog.modem import (CallerId, CallerIdModem, CallerIdParser, ModemNotAnswering, Ring,
                             parse_line)

FAST = {"reply_timeout_s": 0.3, "block_gap_s": 0.15, "retry_first_s": 0.05, "retry_max_s": 0.2,
        "poll_s": 0.02}
INIT = ["ATZ", "ATE0", "AT+VCID=1"]


class FakeModem(threading.Thread):
    """The modem's side of a pty: answers AT commands (ERROR to those in `refuse`), echoes them
    until ATE0 as a reset modem does, and sends what the test tells it to."""

    def __init__(self, refuse=()):
        super().__init__(daemon=True)
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.refuse = set(refuse)
        self.commands: list[str] = []
        self.answering = threading.Event()
        self.answering.set()
        self._echo = True
        self._done = threading.Event()
        self._closed = False

    def run(self):
        buffer = b""
        while not self._done.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                buffer += os.read(self.master, 1024)
            except OSError:
                time.sleep(0.02)
                continue
            while b"\r" in buffer:
                raw, buffer = buffer.split(b"\r", 1)
                command = raw.strip().decode("ascii", "replace")
                if command:
                    self._answer(command)

    def _answer(self, command: str):
        self.commands.append(command)
        if not self.answering.is_set():
            return
        if self._echo:
            self.send_raw(command.encode() + b"\r")
        if command == "ATZ":
            self._echo = True
        elif command == "ATE0":
            self._echo = False
        self.send("ERROR" if command in self.refuse else "OK")

    def send(self, *lines: str):
        """Send result-code style lines (CR LF before and after each)."""
        self.send_raw(b"".join(b"\r\n" + line.encode("ascii") + b"\r\n" for line in lines))

    def send_raw(self, data: bytes):
        os.write(self.master, data)

    def close(self):
        """Unplug: the pty is gone."""
        if self._closed:
            return
        self._closed = True
        self._done.set()
        self.join(1)
        os.close(self.master)
        os.close(self.slave)


class Events:
    """What `on_event` was given, in order."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()

    def put(self, event):
        self._queue.put((time.monotonic(), event))

    def get_timed(self, timeout: float = 2.0):
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def take(self, count: int) -> list:
        return [self.get_timed()[1] for _ in range(count)]

    def assert_quiet(self, seconds: float):
        try:
            _, event = self._queue.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event {event!r}")


def wait_until(condition, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def fake():
    made = []

    def make(**kwargs) -> FakeModem:
        modem = FakeModem(**kwargs)
        modem.start()
        made.append(modem)
        return modem

    yield make
    for modem in made:
        modem.close()


@pytest.fixture
def start_modem(fake):
    started = []

    def start(path: str, **kwargs) -> tuple[CallerIdModem, Events]:
        events = Events()
        modem = CallerIdModem(path, events.put, **{**FAST, **kwargs})
        modem.start()
        started.append(modem)
        assert modem.connected.wait(3), f"not initialised: {modem.last_error!r}"
        return modem, events

    yield start
    for modem in started:
        began = time.monotonic()
        modem.stop()
        modem.join(1)
        assert not modem.is_alive() and time.monotonic() - began < 1


def cid(number=None, name=None, date=None, time_=None, raw=(), number_reason=None,
        name_reason=None) -> CallerId:
    return CallerId(ANY, number, name, date, time_, tuple(raw), number_reason, name_reason)


# -- parsing, without a port ----------------------------------------------------------------------

@pytest.mark.parametrize("line, parsed", [
    ("DATE = 0321", ("DATE", "0321")),
    ("TIME=1405", ("TIME", "1405")),
    ("NMBR = 5551234", ("NMBR", "5551234")),
    ("NAME = JOHN DOE", ("NAME", "JOHN DOE")),
    ("DDN_NMBR= 9932562", ("NMBR", "9932562")),
    ("NMBR = P", ("NMBR", "P")),
    ("MESG = 110101", ("MESG", "110101")),
    ("CALLER NUMBER: 555-1234", ("NMBR", "555-1234")),
    ("CALLER NAME: JOHN DOE", ("NAME", "JOHN DOE")),
    ("TIME: 03-21 14:05", ("TIME", "03-21 14:05")),
    ("DATE TIME=11/24 22:10", ("TIME", "11/24 22:10")),
    ("CallerID: 5551234", ("NMBR", "5551234")),
    ("REASON FOR NO CALLER NUMBER: P", ("NMBR_REASON", "P")),
    ('+CLIP: "+3225551234",145,,,"JOHN DOE",0', ("CLIP", '"+3225551234",145,,,"JOHN DOE",0')),
    ("RING", ("RING", "")),
    ("\ufffd\x00NMBR = 5551234 \x7f", ("NMBR", "5551234")),
])
def test_parse_line_reads_the_dialects(line, parsed):
    assert parse_line(line) == parsed


@pytest.mark.parametrize("line", [
    "OK", "RINGING", "ATE0", "AT+VCID=1", "FOO = BAR", "NAME", "NMBR = ", "DATE = 03",
    "TIME = 14h05", "NMBR = 55\ufffd51234", "NAME = JO\ufffdHN DOE", "NAME = JO\x00HN",
    "NMBR = 555NAME = X", "NAME = JOHN NMBR=5551234",
    "MESG = 11ZZ", '+CLIP: 5551234', "",
])
def test_parse_line_refuses_everything_else(line):
    assert parse_line(line) is None


def test_parser_block_rules():
    parser = CallerIdParser(gap_s=0.5)
    assert parser.feed("NAME = O", 1.0) == []
    assert parser.feed("DDN_NMBR= 9932562", 1.1) == []          # any order: no early end
    assert parser.feed("NMBR = O", 1.2) == []                   # the first number wins
    assert parser.feed("DATE = 0321", 1.3) == []
    assert parser.poll(1.7) is None and parser.deadline() == pytest.approx(1.8)
    assert parser.feed("DATE = 0322", 1.4) == [CallerId(
        1.0, "9932562", None, "0321", None,
        ("NAME = O", "DDN_NMBR= 9932562", "NMBR = O", "DATE = 0321"), None, "unavailable")]
    assert parser.feed("TIME: 03-22 09:10", 1.5) == []
    assert parser.poll(1.99) is None
    assert parser.poll(2.0) == CallerId(1.4, None, None, "0322", "0910",
                                        ("DATE = 0322", "TIME: 03-22 09:10"))
    assert not parser.pending and parser.feed("RING", 3.0) == [Ring(3.0)]


# -- through a pty -------------------------------------------------------------------------------

def test_mci_dialect(fake, start_modem):
    line = fake()
    modem, events = start_modem(line.path)
    assert line.commands == INIT and modem.cid_command == "AT+VCID=1"
    sent = time.monotonic()
    line.send("RING")
    line.send("MESG = 110101", "DATE = 0321", "TIME = 1405", "NMBR = 5551234", "NAME = JOHN DOE")
    line.send("RING")
    first, block, second = events.take(3)
    assert isinstance(first, Ring) and isinstance(second, Ring)
    assert block == cid("5551234", "JOHN DOE", "0321", "1405",
                        ["MESG = 110101", "DATE = 0321", "TIME = 1405", "NMBR = 5551234",
                         "NAME = JOHN DOE"])
    assert sent <= first.t <= block.t <= second.t <= time.monotonic()
    events.assert_quiet(0.3)


def test_number_only(fake, start_modem):
    line = fake()
    modem, events = start_modem(line.path)
    line.send("RING", "NMBR = 5551234", "RING")
    assert events.take(3) == [Ring(ANY), cid("5551234", raw=["NMBR = 5551234"]), Ring(ANY)]
    sent = time.monotonic()
    line.send("CALLER NUMBER: 555-9876")                      # no RING after it: the gap ends it
    arrived, block = events.get_timed()
    assert block == cid("5559876", raw=["CALLER NUMBER: 555-9876"])
    assert arrived - sent >= FAST["block_gap_s"]


def test_clip_dialect(fake, start_modem):
    line = fake(refuse={"AT+VCID=1", "AT#CID=1", "AT%CCID=1"})
    modem, events = start_modem(line.path)
    assert line.commands == ["ATZ", "ATE0", "AT+VCID=1", "AT#CID=1", "AT%CCID=1", "AT+CLIP=1"]
    assert modem.cid_command == "AT+CLIP=1"
    line.send("RING", '+CLIP: "+3225551234",145,,,"JOHN DOE",0', "RING", '+CLIP: "",128,,,,1')
    assert events.take(4) == [
        Ring(ANY),
        cid("+3225551234", "JOHN DOE", raw=['+CLIP: "+3225551234",145,,,"JOHN DOE",0']),
        Ring(ANY),
        cid(None, raw=['+CLIP: "",128,,,,1'], number_reason="private"),
    ]


def test_private_and_unavailable(fake, start_modem):
    line = fake()
    modem, events = start_modem(line.path)
    line.send("RING", "DATE = 0321", "TIME = 1405", "NMBR = P", "NAME = P", "RING")
    line.send("DATE=0322", "TIME=0911", "NAME = O", "DDN_NMBR= O", "RING")
    assert events.take(5) == [
        Ring(ANY),
        cid(None, None, "0321", "1405", ["DATE = 0321", "TIME = 1405", "NMBR = P", "NAME = P"],
            "private", "private"),
        Ring(ANY),
        cid(None, None, "0322", "0911", ["DATE=0322", "TIME=0911", "NAME = O", "DDN_NMBR= O"],
            "unavailable", "unavailable"),
        Ring(ANY),
    ]


def test_vcid_refused_falls_back_to_the_next_command(fake, start_modem):
    line = fake(refuse={"AT+VCID=1"})
    modem, events = start_modem(line.path)
    assert line.commands == ["ATZ", "ATE0", "AT+VCID=1", "AT#CID=1"]
    assert modem.cid_command == "AT#CID=1"
    line.send("RING", "DATE = 0321", "TIME = 1405", "NMBR = 5551234", "RING")
    assert events.take(3) == [
        Ring(ANY),
        cid("5551234", None, "0321", "1405", ["DATE = 0321", "TIME = 1405", "NMBR = 5551234"]),
        Ring(ANY),
    ]


def test_no_caller_id_command_accepted_still_reports_ring(fake, start_modem):
    refused = {"AT+VCID=1", "AT#CID=1", "AT%CCID=1", "AT+CLIP=1"}
    line = fake(refuse=refused)
    modem, events = start_modem(line.path)
    assert line.commands == ["ATZ", "ATE0", "AT+VCID=1", "AT#CID=1", "AT%CCID=1", "AT+CLIP=1"]
    assert modem.cid_command is None
    line.send("RING")
    assert events.take(1) == [Ring(ANY)]


def test_garbage_between_blocks_is_ignored(fake, start_modem):
    line = fake()
    modem, events = start_modem(line.path)
    line.send("RING", "DATE = 0321", "TIME = 1405", "NMBR = 5551234", "NAME = JOHN DOE")
    line.send_raw(b"\xff\xfe\x80\x00\x1b[2J\r\n")             # line noise
    line.send("RING")
    line.send_raw(b"NMBR = 55\xff51234\r\n")                    # a corrupted byte inside
    line.send("FOO = BAR", "NAME", "DATE = 03", "NMBR = 555NAME = X")
    line.send_raw(b"NMBR = 55")                                 # truncated, no line end
    time.sleep(FAST["block_gap_s"] * 2)
    line.send_raw(b"\r\nDATE = 0322\r\n\xfe\xfd\r\nTIME = 0910\r\nNMBR = 5559876\r\n"
                  b"NAME = JO\xffHN\r\n")                     # a bad byte: the name is refused
    line.send("RING")
    assert events.take(5) == [
        Ring(ANY),
        cid("5551234", "JOHN DOE", "0321", "1405",
            ["DATE = 0321", "TIME = 1405", "NMBR = 5551234", "NAME = JOHN DOE"]),
        Ring(ANY),
        cid("5559876", None, "0322", "0910", ["DATE = 0322", "TIME = 0910", "NMBR = 5559876"]),
        Ring(ANY),
    ]
    events.assert_quiet(0.3)


def test_handler_failure_does_not_stop_the_modem(fake, start_modem, caplog):
    line = fake()
    modem, events = start_modem(line.path)

    def fussy(event):
        if isinstance(event, Ring):
            raise RuntimeError("handler bug")
        events.put(event)

    modem.on_event = fussy
    line.send("RING", "NMBR = 5551234", "RING")
    assert events.take(1) == [cid("5551234", raw=["NMBR = 5551234"])]
    wait_until(lambda: sum("caller-ID handler failed" in r.getMessage()
                           for r in caplog.records) == 2)
    assert modem.connected.is_set() and line.commands == INIT


def test_silent_modem_is_reinitialised(fake, start_modem, caplog):
    caplog.set_level(logging.INFO, logger="appliance.analog.modem")
    line = fake()
    modem, events = start_modem(line.path, health_interval_s=0.2, reply_timeout_s=0.2)
    wait_until(lambda: "AT" in line.commands)                   # a health check, answered
    assert modem.connected.is_set() and line.commands.count("ATZ") == 1
    line.answering.clear()
    wait_until(lambda: not modem.connected.is_set())
    wait_until(lambda: line.commands.count("ATZ") >= 3)         # tried again, twice, in vain
    line.answering.set()
    assert modem.connected.wait(3)
    reinit = line.commands.index("ATZ", 1)
    assert line.commands[reinit - 1] == "AT" and line.commands[-3:] == INIT
    assert isinstance(modem.last_error, ModemNotAnswering)
    assert str(modem.last_error) == "no reply to ATZ within 0.2 s"
    errors = [r for r in caplog.records
              if r.name == "appliance.analog.modem" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no reply to AT within 0.2 s" in errors[0].getMessage()
    assert any("is back" in r.getMessage() for r in caplog.records)
    line.send("RING", "NMBR = 5551234", "RING")
    assert events.take(3) == [Ring(ANY), cid("5551234", raw=["NMBR = 5551234"]), Ring(ANY)]


def test_unplugged_modem_is_reopened(fake, start_modem, tmp_path):
    link = tmp_path / "callrec-modem"
    first = fake()
    os.symlink(first.path, link)
    modem, events = start_modem(str(link))
    first.send("RING", "NMBR = 5551111", "RING")
    assert events.take(3) == [Ring(ANY), cid("5551111", raw=["NMBR = 5551111"]), Ring(ANY)]

    first.close()
    wait_until(lambda: not modem.connected.is_set())
    # the pty's hang-up shows as EIO from pyserial's read or straight from an ioctl, by timing
    assert isinstance(modem.last_error, OSError)
    second = fake()
    os.symlink(second.path, tmp_path / "next")
    os.replace(tmp_path / "next", link)
    assert modem.connected.wait(3)
    assert second.commands == INIT
    second.send("RING", "DATE = 0321", "TIME = 1405", "NMBR = 5552222", "NAME = JANE ROE", "RING")
    assert events.take(3) == [
        Ring(ANY),
        cid("5552222", "JANE ROE", "0321", "1405",
            ["DATE = 0321", "TIME = 1405", "NMBR = 5552222", "NAME = JANE ROE"]),
        Ring(ANY),
    ]


def test_stop_during_outage(tmp_path):
    events = Events()
    modem = CallerIdModem(str(tmp_path / "absent"), events.put, retry_first_s=5, retry_max_s=10)
    modem.start()
    wait_until(lambda: modem.last_error is not None)
    began = time.monotonic()
    modem.stop()
    modem.join(1)
    assert not modem.is_alive() and time.monotonic() - began < 1
    assert isinstance(modem.last_error, serial.SerialException)
    assert not modem.connected.is_set()
    events.assert_quiet(0)
