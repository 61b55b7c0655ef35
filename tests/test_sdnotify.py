"""systemd's notifications as systemd receives them: a datagram socket bound where $NOTIFY_SOCKET
points. The recorder says READY=1 once it records, STOPPING=1 when told to stop, and WATCHDOG=1
only while every line's capture delivers audio, so that systemd restarts a recorder whose capture
died or hangs."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from appliance import sdnotify
from conftest import simulated_cards, write_config

WATCHDOG_S = 1.5        # pings every 0.5 s; capture counts as stalled after 0.75 s without audio


class Systemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def messages(self, seconds: float) -> list[str]:
        """Every message that arrives within `seconds`."""
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def wait_for(self, field: str, seconds: float) -> list[str]:
        """Messages until one has a line that starts with `field`; fails after `seconds`."""
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            got += self.messages(min(0.2, deadline - time.monotonic()))
            if any(line.startswith(field) for m in got for line in m.split("\n")):
                return got
        raise AssertionError(f"no {field} within {seconds} s, got {got}")


def pings(messages: list[str]) -> int:
    return sum("WATCHDOG=1" in m.split("\n") for m in messages)


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    receiver = Systemd(path)
    yield receiver
    receiver.sock.close()


def test_without_systemd_notifications_are_skipped(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_a_notification_reaches_an_abstract_socket(monkeypatch):
    name = f"callrec-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1", "STATUS=recording 1 line(s)")
        assert sock.recv(4096) == b"READY=1\nSTATUS=recording 1 line(s)"


def test_a_watchdog_meant_for_another_process_is_not_ours(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_timeout() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")         # inherited from the service's main process
    assert sdnotify.watchdog_timeout() is None


@pytest.fixture
def fed_line(tmp_path, monkeypatch):
    """A Recorder in this process on line t1, whose capture reads a FIFO that a feeder process
    keeps filling in real time, like a sound card. Yields the recorder (not started) and the
    feeder's process."""
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder
    from appliance.simulate import simulated

    data = tmp_path / "data"
    alsa, [feeder] = simulated_cards(data, ["t1"])
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
    factory = MockFactory()
    recorder = Recorder(simulated(load_config(write_config(tmp_path)), data), pin_factory=factory)
    yield recorder, feeder
    recorder.stop()
    feeder.kill()
    feeder.wait()
    factory.reset()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_watchdog_is_fed_only_while_capture_delivers_audio(systemd, fed_line):
    recorder, feeder = fed_line
    recorder.start()
    systemd.wait_for("WATCHDOG=1", 5)
    assert pings(systemd.messages(2.0)) >= 3                 # every 0.5 s while audio flows

    os.kill(feeder.pid, signal.SIGSTOP)                       # the card stops delivering: reads hang
    systemd.wait_for("STATUS=line t1: no audio from callrec_sim_capture_t1 for ", 3)
    assert pings(systemd.messages(2.0)) == 0

    os.kill(feeder.pid, signal.SIGCONT)                       # audio again: the pings come back
    systemd.wait_for("WATCHDOG=1", 3)
    assert pings(systemd.messages(1.5)) >= 2

    def broken_tap(pcm):
        raise RuntimeError("a bug in the capture thread")
    recorder.lines[0].capture.tap = broken_tap                # the thread dies of it
    systemd.wait_for("STATUS=line t1: capture thread ended", 3)
    assert not recorder.lines[0].capture.is_alive()
    assert pings(systemd.messages(2.0)) == 0


def test_callrec_run_is_ready_keeps_pinging_while_a_card_is_missing_and_says_when_it_stops(
        systemd, tmp_path):
    # No such sound card: capture keeps retrying and the fault LED shows it, but a restart would
    # not bring the card back, so the watchdog is still fed.
    config = write_config(tmp_path, recorder={"data_dir": str(tmp_path / "data"),
                                              "runtime_dir": str(tmp_path / "run")},
                          line={"capture": "callrec_no_such_card"})
    log = run_as_a_service(systemd, ["run", "--config", str(config)], "STATUS=recording 1 line(s)")
    assert "cannot open capture device callrec_no_such_card" in log


def run_as_a_service(systemd, args: list[str], status: str) -> str:
    """Start `callrec ARGS` as systemd would: it says READY=1 with `status` and pings the
    watchdog; SIGTERM makes it say STOPPING=1 and exit 0. Returns what it logged."""
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    del env["WATCHDOG_PID"]             # systemd sets it to the service's pid: unknown before the start
    service = subprocess.Popen([sys.executable, "-m", "appliance", *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert f"READY=1\n{status}" in systemd.wait_for("READY=1", 20)
        assert pings(systemd.messages(2.0)) >= 3
    finally:
        service.send_signal(signal.SIGTERM)
    systemd.wait_for("STOPPING=1", 10)
    assert service.wait(10) == 0
    return service.stderr.read()


def test_callrec_web_is_ready_and_pings_while_it_answers_its_health_check(systemd, web_appliance):
    config, _, _ = web_appliance
    run_as_a_service(systemd, ["web", "--config", str(config)], "STATUS=serving the web UI")


def test_the_web_health_check_fails_once_https_stops_answering(web_appliance):
    from web.server import WebServer

    config, _, _ = web_appliance
    server = WebServer(config)
    server.start()
    try:
        assert server.problem(2.0) is None
        server.stop()
        assert "does not answer its health check" in server.problem(2.0)
    finally:
        server.stop()


class Defect(BaseException):
    """Escapes every `except Exception`: a bug that ends the thread it happens in."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("service", ["catalogue-writer", "finaliser", "live"])
def test_a_service_that_dies_stops_the_watchdog_being_fed(systemd, fed_line, service):
    recorder, _ = fed_line
    recorder.start()
    systemd.wait_for("WATCHDOG=1", 5)

    def defect(*_):
        raise Defect("a bug")
    if service == "live":
        recorder.live.snapshot = defect         # the live state's next look at the lines
    else:
        {"catalogue-writer": recorder.writer, "finaliser": recorder.finaliser}[service].submit(defect)
    systemd.wait_for(f"STATUS={service} died (Defect: a bug)", 3)
    assert pings(systemd.messages(2.0)) == 0
