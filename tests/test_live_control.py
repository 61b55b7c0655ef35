"""The recorder's control channel against the real recorder (simulated line t1: MockFactory pins, a
FIFO-fed ALSA capture PCM in real time): screen pauses with the button's rules and marks, live
listeners that never slow the capture, nothing streamed of a declined call, the listener limit,
and bad requests refused without effect."""

import json
import os
import socket
import stat
import threading
import time

import numpy as np
import pytest

from appliance.scenario import dtmf_tone
from conftest import RATE, recording, simulated_cards, stop, tone, tone_level, wait_for, write_config

SPEECH_HZ = 700


@pytest.fixture
def line(tmp_path, monkeypatch):
    """Builds the recorder in this process on line t1 whose audio is `audio` (float samples from
    the feeder's start); yields build(audio, recorder settings, line settings) -> (recorder, hook pin)."""
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder
    from appliance.simulate import simulated

    data = tmp_path / "data"
    factory = MockFactory()
    made, feeders = [], []

    def build(audio: np.ndarray, recorder: dict | None = None, **line):
        pcm = (np.clip(audio, -1, 0.999) * 32768).astype("<i2").tobytes()
        alsa, started = simulated_cards(data, ["t1"], pcm)
        feeders.extend(started)
        monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
        settings = {"dialling_window_s": 0.0, **(recorder or {})}
        config = simulated(load_config(write_config(tmp_path, recorder=settings,
                                                    line={"outgoing": "off", **line})), data)
        made.append(Recorder(config, pin_factory=factory))
        made[-1].start()
        return made[-1], factory.pin(17)

    yield build
    for recorder in made:
        recorder.stop()
    stop(feeders)
    factory.reset()


def ask(recorder, request: dict | bytes) -> tuple[dict, socket.socket]:
    """Send a request to the control socket; the answer and the open connection."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(recorder.control.path))
    conn.sendall(request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n")
    line = b""
    while not line.endswith(b"\n"):
        line += conn.recv(1)
    return json.loads(line), conn


def read_all(conn: socket.socket, into: bytearray) -> None:
    """Read a listener's stream to its end."""
    while piece := conn.recv(65536):
        into += piece


def call_in_progress(recorder) -> int:
    assert wait_for(lambda: recorder.lines[0].call is not None and recorder.lines[0].call.id is not None, 5)
    return recorder.lines[0].call.id


def wait_idle(recorder) -> None:
    assert wait_for(recorder.idle, 10)


def test_the_socket_is_for_the_recorders_user_and_group_and_bad_requests_change_nothing(line):
    recorder, hook = line(np.zeros(RATE * 30))
    mode = stat.S_IMODE(os.stat(recorder.control.path).st_mode)
    assert mode == 0o660
    hook.drive_low()
    call_id = call_in_progress(recorder)
    for request, error in [(b"pause t1\n", "not one line of JSON"),
                           ({"command": "reboot", "line": "t1", "by": "user:x"}, "command: one of"),
                           ({"command": "pause", "line": "t9", "by": "user:x"}, "no line named 't9'"),
                           ({"command": "pause", "line": "t1"}, "by:"),
                           ({"command": "pause", "line": "t1", "by": "user:x", "call_id": call_id + 1},
                            "not in progress"),
                           ({"command": "resume", "line": "t1", "by": "user:x"}, "not paused")]:
        answer, conn = ask(recorder, request)
        conn.close()
        assert answer["ok"] is False and error in answer["error"], (request, answer)
    time.sleep(0.3)
    assert not recorder.lines[0].call.rules.paused
    hook.drive_high()
    wait_idle(recorder)
    assert recorder.catalogue.pauses(call_id) == []


def test_a_screen_pause_follows_the_buttons_rules_and_is_marked_screen(line):
    recorder, hook = line(tone(SPEECH_HZ, 30, 0.3))
    hook.drive_low()
    call_id = call_in_progress(recorder)
    time.sleep(1.0)
    answer, conn = ask(recorder, {"command": "pause", "line": "t1", "by": "user:clerk", "call_id": call_id})
    conn.close()
    assert answer == {"ok": True, "call_id": call_id, "paused": True}
    answer, conn = ask(recorder, {"command": "pause", "line": "t1", "by": "user:clerk"})
    conn.close()
    assert answer["ok"] is False and "already paused" in answer["error"] and answer["reason"] == "already-paused"
    time.sleep(1.5)
    answer, conn = ask(recorder, {"command": "resume", "line": "t1", "by": "user:clerk", "call_id": call_id})
    conn.close()
    assert answer == {"ok": True, "call_id": call_id, "paused": False}
    time.sleep(1.0)
    hook.drive_high()
    wait_idle(recorder)
    [(start, end, reason)] = recorder.catalogue.pauses(call_id)
    assert reason == "screen" and 1.3 < end - start < 1.8


def test_a_listener_that_never_reads_does_not_slow_the_capture(line):
    recorder, hook = line(tone(SPEECH_HZ, 30, 0.3))
    time.sleep(2.3)                     # the pre-roll fills
    off_hook = time.monotonic()
    hook.drive_low()
    call_id = call_in_progress(recorder)
    answer, idle_listener = ask(recorder, {"command": "listen", "line": "t1", "by": "user:boss"})
    assert answer["ok"] and answer["rate"] == RATE and answer["channels"] == 1
    time.sleep(8.0)             # far more than the socket's buffers and the listener's queue hold
    held = time.monotonic() - off_hook
    hook.drive_high()
    wait_idle(recorder)
    call = recorder.catalogue.get_call(call_id)
    assert call["state"] == "complete" and call["overruns"] == 0
    # The pre-roll, every second since, and the on-hook told from a flash (0.7 s).
    assert abs(call["duration_s"] - (2.0 + held + 0.7)) < 0.3
    samples = recording(recorder.config.recorder.data_dir, call)
    quiet = [i for i in range(0, len(samples) - RATE // 4, RATE // 4)
             if tone_level(samples[i:i + RATE // 4], SPEECH_HZ) < 0.2]
    assert quiet == []                  # no gap anywhere: the line all through
    tap = recorder.lines[0].last_call.audio.taps[0]
    assert tap.dropped > 0 and tap.closed.is_set()
    idle_listener.close()


def test_listeners_hear_the_line_up_to_the_limit_and_their_stream_ends_with_the_call(line):
    recorder, hook = line(tone(SPEECH_HZ, 30, 0.3), recorder={"listeners_per_line": 1})
    hook.drive_low()
    call_id = call_in_progress(recorder)
    answer, first = ask(recorder, {"command": "listen", "line": "t1", "by": "user:boss", "call_id": call_id})
    assert answer["ok"] and answer["call_id"] == call_id
    refused, second = ask(recorder, {"command": "listen", "line": "t1", "by": "user:other"})
    second.close()
    assert refused["ok"] is False and "1 listeners already (listeners_per_line)" in refused["error"]
    assert refused["reason"] == "listeners-full" and refused["values"] == {"limit": 1}     # worded by the web UI
    heard = bytearray()
    reader = threading.Thread(target=read_all, args=(first, heard))
    reader.start()
    time.sleep(2.0)
    hook.drive_high()
    reader.join(5)
    assert not reader.is_alive()            # the stream ended with the call
    samples = np.frombuffer(bytes(heard), "<i2") / 32768
    assert 2.0 * RATE < len(samples) < (2.0 + 0.7 + 0.5) * RATE     # to the on-hook (0.7 s to tell a flash)
    assert tone_level(samples, SPEECH_HZ) > 0.2


def test_nothing_of_a_declined_call_is_streamed(line):
    # The shop keys the private code as the call's first keys: nothing of the call may be kept,
    # nor heard live, though a listener asked at once.
    audio = np.concatenate([np.zeros(int(2.5 * RATE)), dtmf_tone("1", RATE), np.zeros(RATE // 10),
                            dtmf_tone("2", RATE), tone(SPEECH_HZ, 20, 0.3)])
    recorder, hook = line(audio, private_code="12", private_window_s=3.0)
    time.sleep(2.2)
    hook.drive_low()
    call_in_progress(recorder)
    answer, conn = ask(recorder, {"command": "listen", "line": "t1", "by": "user:boss"})
    assert answer["ok"]
    heard = bytearray()
    reader = threading.Thread(target=read_all, args=(conn, heard))
    reader.start()
    reader.join(6)
    assert not reader.is_alive() and heard == b""       # the stream ended at the decline, empty
    hook.drive_high()
    wait_idle(recorder)
    [call] = recorder.catalogue.calls()
    assert call["state"] == "discarded" and call["discard_reason"] == "private"


def test_a_sip_call_is_heard_live_in_stereo_and_paused_from_the_screen(tmp_path):
    from appliance.sip import g711
    from sipp.harness import read_stereo
    from test_sip import CALLEE_HZ, CALLER_HZ, Trunk, call_through, write_pcap

    trunk = Trunk(tmp_path)
    write_pcap(tmp_path / "caller.pcap", tone(CALLER_HZ, 5.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(tmp_path / "callee.pcap", tone(CALLEE_HZ, 5.0, 0.5), g711.PCMA, 0x2222)
    recorder = trunk.start(notice_incoming=False)
    heard, answers = bytearray(), []

    def control():
        assert wait_for(lambda: any(r.call_id is not None for r in recorder.trunks[0].line.active), 10)
        answer, conn = ask(recorder, {"command": "listen", "line": "sip1", "by": "user:boss"})
        answers.append(answer)
        reader = threading.Thread(target=read_all, args=(conn, heard))
        reader.start()
        time.sleep(1.0)
        for command in ("pause", "resume"):
            answer, conn = ask(recorder, {"command": command, "line": "sip1", "by": "user:clerk"})
            conn.close()
            answers.append(answer)
            time.sleep(1.0)
        reader.join(10)
    controller = threading.Thread(target=control)
    try:
        controller.start()
        call_through(trunk, "uac.xml", "uas.xml", 4000)
        controller.join(15)
        [call] = trunk.calls()
        assert answers[0]["ok"] and (answers[0]["channels"], answers[0]["rate"]) == (2, RATE)
        assert [a["paused"] for a in answers[1:]] == [True, False]
        [(start, end, reason)] = recorder.catalogue.pauses(call["id"])
        assert reason == "screen" and 0.8 < end - start < 1.3
        _, right = read_stereo(tmp_path / "data" / call["file"])
        assert np.abs(right[int(start * RATE) + 8:int(end * RATE) - 8]).max() == 0
        stream = np.frombuffer(bytes(heard), "<i2").reshape(-1, 2) / 32768
        assert len(stream) > 2.5 * RATE
        assert tone_level(stream[:, 0], CALLER_HZ) > 0.2 and tone_level(stream[:, 1], CALLEE_HZ) > 0.2
        silent = np.abs(stream).max(axis=1) == 0
        assert 0.7 * RATE < silent.sum() < 1.4 * RATE           # the pause, as silence
    finally:
        trunk.stop()


def test_a_reload_asked_on_the_control_channel_is_the_reload_signal(tmp_path):
    # The web UI runs as a user of its own, which may not send the recorder SIGHUP.
    import signal as signals

    from appliance.control import ControlService

    got = threading.Event()
    previous = signals.signal(signals.SIGHUP, lambda *_: got.set())
    service = ControlService(tmp_path, {})
    service.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(tmp_path / "control.sock"))
            conn.sendall(b'{"command": "reload", "by": "web"}\n')
            assert json.loads(conn.makefile("rb").readline()) == {"ok": True}
        assert got.wait(5)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(tmp_path / "control.sock"))
            conn.sendall(b'{"command": "reload"}\n')
            assert json.loads(conn.makefile("rb").readline()) == {"ok": False, "error": "by: who asks (for the log)"}
    finally:
        service.stop(2)
        signals.signal(signals.SIGHUP, previous)
