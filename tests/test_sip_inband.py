"""In-band DTMF on SIP trunks: a key that comes as a tone in a side's audio (a trunk or phone that
negotiates no telephone-event, or one that sends both) does what an RFC 4733 key does, each press
once, and speech or the notice never make a key. SIPp plays the parties, as in test_sip.py."""

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.codec import decode_to_pcm
from appliance.dtmf import DtmfDetector
from appliance.sip import g711
from conftest import RATE, tone
from sipp.harness import pcap_audio, read_stereo, write_pcap
from sipp.keyed import with_key, write_keyed_pcap
from test_sip import CALLEE_HZ, assert_declined, assert_paused, call_through, levels, trunk  # noqa: F401 (a fixture)

DEMO = Path(__file__).resolve().parent.parent / "appliance" / "demo"
KEY_S = 0.12                # a short press


def line_noise(seconds: float) -> np.ndarray:
    """A quiet line (-60 dBFS of hiss): a party listening."""
    return np.random.default_rng(7).normal(0, 0.001, int(seconds * RATE))


def speech(name: str, level: float = 1.0) -> np.ndarray:
    """One of the demo's recordings as float samples at 8 kHz."""
    return level * np.frombuffer(decode_to_pcm(DEMO / name, RATE), dtype="<i2") / 32768.0


def keys_in(pcap: Path) -> str:
    """The keys the detector finds in the audio of a pcap on its own."""
    pcm = (pcap_audio(pcap) * 32768).astype("<i2").tobytes()
    return "".join(digit.key for digit in DtmfDetector(RATE).scan(pcm))


@pytest.mark.parametrize("then_s", [1.5, 0.2], ids=["then-listens", "then-hangs-up"])
def test_the_opt_out_key_as_a_tone_without_telephone_events_destroys_the_recording(trunk, then_s):
    at = 1.3                    # after the 1 s notice
    caller = write_pcap(trunk.folder / "caller.pcap", with_key(line_noise(4.0), "9", at, KEY_S), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 4.0, 0.5), g711.PCMA, 0x2222)
    assert keys_in(caller) == "9"
    trunk.start(optout_digit="9")
    call_through(trunk, "uac_no_events.xml", "uas_no_events.xml", int((at + KEY_S + then_s) * 1000))
    assert_declined(trunk)


def test_a_key_sent_as_event_and_tone_and_echoed_by_the_other_side_is_one_press(trunk):
    at = 1.0
    caller = write_keyed_pcap(trunk.folder / "caller.pcap", with_key(line_noise(4.0), "#", at, KEY_S), 0x1111,
                              events=[("#", at, KEY_S)])
    # The shop listens (its line quiet) while the caller keys; its line echoes the tone back 12 dB
    # down and 30 ms later, then it talks again.
    shop = np.concatenate([tone(CALLEE_HZ, 0.8, 0.5), line_noise(1.2), tone(CALLEE_HZ, 2.0, 0.5)])
    echoed = with_key(shop, "#", at + 0.03, KEY_S, dbm0=-22)
    callee = write_pcap(trunk.folder / "callee.pcap", echoed, g711.PCMA, 0x2222)
    assert keys_in(caller) == "#" and keys_in(callee) == "#"       # each tone is there to be heard
    trunk.start(pause_code="#", notice_incoming=False)
    call_through(trunk, "uac.xml", "uas.xml", 3500)
    [call] = trunk.calls()
    # Paused once, at the event, to the end: neither the tone nor its echo resumed it.
    [(start, end, reason)] = trunk.recorder.catalogue.pauses(call["id"])
    assert reason == "dtmf" and 0.9 < start < 1.4 and end > call["duration_s"] - 0.05
    assert trunk.recorder.catalogue.digits(call["id"]) == []
    _, right = read_stereo(trunk.folder / "data" / call["file"])
    assert levels(right, 0.2, 0.7)[CALLEE_HZ] > 0.4
    assert np.abs(right[int(start * RATE) + 8:int(end * RATE) - 8]).max() == 0    # the shop's talk after 2 s too


@contextlib.contextmanager
def stalling(sip, every_s: float = 0.45, stall_s: float = 0.35):
    """The relay's loop stops for `stall_s` every `every_s` (a slow moment of the Pi, another
    thread holding the interpreter) and its tick comes first after each stall, before the
    sockets' packets of that time are read."""
    done = threading.Event()

    def stall_then_tick():
        time.sleep(stall_s)
        sip.proxy._tick()

    def stall_now_and_then():
        while not done.wait(every_s):
            sip.loop.call_soon_threadsafe(stall_then_tick)
    thread = threading.Thread(target=stall_now_and_then, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("stalls", [False, True], ids=["", "the-relay-loop-stalls"])
def test_a_pause_keyed_as_tones_silences_the_call_from_the_key_on(trunk, stalls):
    # A card payment: the caller keys the pause code as tones (no telephone-event), the shop
    # reads back the card number at once, then the caller keys it again to resume.
    keyed = with_key(with_key(line_noise(4.0), "#", 1.0, KEY_S), "#", 2.5, KEY_S)
    write_pcap(trunk.folder / "caller.pcap", keyed, g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 4.0, 0.5), g711.PCMA, 0x2222)
    recorder = trunk.start(pause_code="#", notice_incoming=False)
    with stalling(recorder.trunks[0]) if stalls else contextlib.nullcontext():
        call_through(trunk, "uac_no_events.xml", "uas_no_events.xml", 3500)
    assert_paused(trunk, (0.95, 1.1), (2.45, 2.7))     # from the key on, not a word of the card number


def test_speech_and_the_notice_make_no_key(trunk):
    trunk.notice = DEMO / "notice-en.wav"               # spoken, 3.4 s
    caller = np.concatenate([speech("notice-en.wav", 0.25), speech("order.wav")])   # its echo, then talk
    write_pcap(trunk.folder / "caller.pcap", caller, g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", np.concatenate([speech("supplier.wav")] * 2), g711.PCMA, 0x2222)
    trunk.start(pause_code="#", optout_digit="9")       # both sides listened to, all the call
    call_through(trunk, "uac_no_events.xml", "uas_no_events.xml", int(len(caller) / RATE * 1000))
    [call] = trunk.calls()
    assert (call["state"], call["channels"]) == ("complete", 2) and call["duration_s"] > 11
    assert trunk.recorder.catalogue.digits(call["id"]) == []
    assert trunk.recorder.catalogue.pauses(call["id"]) == []
