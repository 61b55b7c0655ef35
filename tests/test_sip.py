"""SIP trunks through the real recorder, with SIPp as the operator and as the shop's PBX on
127.0.0.1: what each side sent ends up in its own channel, the caller hears the notice first, and
calls that end in every other way leave the catalogue as they should."""

import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from appliance.store.archive import SPOOL_DIR
from appliance.config import load_config
from appliance.live import read_live
from appliance.recorder import Recorder
from appliance.sip import client, g711
from appliance.sip.media import parse_rtp
from conftest import RATE, calls_json, tone, tone_level, wait_for, write_wav
from sipp.harness import HOST, SIPP_PCAPS, RtpEndpoint, finish, free_port, pcap_audio, read_stereo, sipp, \
    trunk_config, write_pcap

NOTICE_HZ, CALLER_HZ, CALLEE_HZ = 1500.0, 440.0, 1000.0
NOTICE_S = 1.0


class Trunk:
    """The recorder with one SIP trunk, and the ports of the SIPp parties around it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.notice = write_wav(folder / "notice.wav", tone(NOTICE_HZ, NOTICE_S, 0.5))
        self.trunk_port, self.pbx_port = free_port(), free_port()
        self.operator_port, self.phone_port = free_port(), free_port()      # SIPp as UAS
        self.caller_port = free_port()                                       # SIPp as UAC
        self.media = [free_port(4) for _ in range(2)]
        self.recorder: Recorder | None = None

    def config(self, pbx_peer: bool = True, rtp_ports: int = 100, archive_format: str = "flac", **settings) -> Path:
        """Write the configuration: the operator's trunk and the PBX at the SIPp UAS ports."""
        return trunk_config(self.folder, self.trunk_port, self.pbx_port, self.operator_port,
                            self.phone_port if pbx_peer else None, self.notice, free_port(rtp_ports),
                            rtp_ports=rtp_ports, archive_format=archive_format, **settings)

    def start(self, **settings) -> Recorder:
        """Start the recorder on a trunk configured with `settings`."""
        self.recorder = Recorder(load_config(self.config(**settings)))
        self.recorder.start()
        return self.recorder

    def calls(self) -> list[dict]:
        """The catalogue's rows once every call is finalised."""
        assert wait_for(self.recorder.idle, 15), "the recorder did not finish its calls"
        return self.recorder.catalogue.calls()

    def stop(self) -> None:
        """Stop the recorder."""
        if self.recorder is not None:
            self.recorder.stop()


@pytest.fixture
def trunk(tmp_path):
    """A SIP trunk of the recorder in a fresh data folder, stopped after the test."""
    t = Trunk(tmp_path)
    yield t
    t.stop()


def call_through(trunk: Trunk, caller: str, callee: str, duration_ms: int, inbound: bool = True,
                 transport: str = "u1", caller_keys: dict | None = None, callee_keys: dict | None = None,
                 service: str = "shop", calls: int = 1) -> None:
    """One SIPp call (or `calls`) from the operator to the PBX (inbound) or the other way."""
    folder = trunk.folder
    listen, target = (trunk.phone_port, trunk.trunk_port) if inbound else (trunk.operator_port, trunk.pbx_port)
    uas = sipp(callee, folder, listen, trunk.media[1], transport=transport, keys=callee_keys, calls=calls)
    time.sleep(0.2)
    uac = sipp(caller, folder, trunk.caller_port, trunk.media[0], remote=f"{HOST}:{target}",
               duration_ms=duration_ms, transport=transport, keys=caller_keys, service=service, calls=calls)
    finish(uac, folder)
    finish(uas, folder)


def levels(samples: np.ndarray, start_s: float, end_s: float) -> dict[float, float]:
    """The level of each test frequency in a stretch of a channel."""
    part = samples[int(start_s * RATE):int(end_s * RATE)]
    return {f: tone_level(part, f) for f in (NOTICE_HZ, CALLER_HZ, CALLEE_HZ)}


def best_match(recorded: np.ndarray, sent: np.ndarray) -> float:
    """The normalised correlation of `recorded` with the best-aligned stretch of `sent`."""
    scores = [np.dot(recorded, sent[lag:lag + len(recorded)]) /
              (np.linalg.norm(recorded) * np.linalg.norm(sent[lag:lag + len(recorded)]) + 1e-9)
              for lag in range(0, len(sent) - len(recorded))]
    return max(scores)


def test_an_incoming_call_has_each_side_in_its_channel_and_the_caller_hears_the_notice_first(trunk):
    shutil.copy(SIPP_PCAPS / "g711a.pcap", trunk.folder / "callee.pcap")      # speech from the shop
    trunk.start()
    caller = RtpEndpoint(tone(CALLER_HZ, 4.0, 0.5))
    caller.start()
    try:
        call_through(trunk, "uac_quiet.xml", "uas.xml", 4000, caller_keys={"rtp_port": str(caller.port)})
    finally:
        caller.close()
    [call] = trunk.calls()
    assert (call["line"], call["direction"], call["state"], call["channels"]) == ("sip1", "incoming", "complete", 2)
    assert call["number"] == "+3225551234"          # P-Asserted-Identity wins over From
    assert call["notice_played_at"] and call["end_reason"] == "hung up by the caller"

    # What the caller heard: the notice from the first packet, then the shop's speech.
    heard = caller.audio()
    assert levels(heard, 0.0, 0.95)[NOTICE_HZ] > 0.4
    speech = pcap_audio(trunk.folder / "callee.pcap")
    assert best_match(heard[int(1.2 * RATE):int(2.2 * RATE)], speech) > 0.95

    left, right = read_stereo(trunk.folder / "data" / call["file"])
    assert abs(len(left) / RATE - call["duration_s"]) < 0.01 and 3.5 < call["duration_s"] < 5.0
    assert levels(left, 0.2, 3.5)[CALLER_HZ] > 0.4 and levels(right, 0.2, 3.5)[CALLER_HZ] < 0.01
    assert levels(right, 0.0, 0.95)[NOTICE_HZ] > 0.4 and levels(left, 0.0, 0.95)[NOTICE_HZ] < 0.01
    assert best_match(right[int(1.2 * RATE):int(2.2 * RATE)], speech) > 0.95   # the shop, sample for sample
    assert levels(left, 1.2, 3.5)[CALLEE_HZ] < 0.01
    assert_one_stream(caller.received)              # the notice, then the shop's packets after it


def test_an_outgoing_call_over_tcp_is_recorded_with_the_number_dialled_in_stereo_opus(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 3.0, 0.5), g711.PCMU, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 3.0, 0.5), g711.PCMU, 0x2222)
    trunk.start(transport="tcp", archive_format="opus", outgoing="off")
    mu_law = {"pt": "0", "codec": "PCMU"}
    call_through(trunk, "uac.xml", "uas.xml", 3000, inbound=False, transport="t1",
                 caller_keys=mu_law, callee_keys=mu_law, service="0475123456")
    [call] = trunk.calls()
    assert (call["direction"], call["number"], call["state"]) == ("outgoing", "0475123456", "complete")
    assert call["notice_played_at"] is None          # outgoing = "off": the called party is not told
    assert call["file"].endswith(".opus") and call["size_bytes"] * 8 / call["duration_s"] < 40000
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    # Opus (in its speech mode) codes the two channels together: the other side leaks in, 15 dB
    # down or more, 15.0 dB at worst seen on a loaded machine; a mix of the two would be 0 dB.
    down_12_db = 10 ** (-12 / 20)
    for channel, own, other in ((left, CALLER_HZ, CALLEE_HZ), (right, CALLEE_HZ, CALLER_HZ)):
        heard = levels(channel, 0.2, 2.8)
        assert heard[own] > 0.3 and heard[other] < heard[own] * down_12_db


BEEP_HZ = 1400.0


def call_out(trunk: Trunk, seconds: float) -> tuple[dict, RtpEndpoint, list[float]]:
    """An outgoing call from the PBX to a called party who rings with early media (183 with SDP)
    and answers 1.5 s later: the call's row, the called party (what it heard), and when its
    packets came (wall clock)."""
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, seconds, 0.5), g711.PCMA, 0x1111)
    called = RtpEndpoint(tone(CALLEE_HZ, seconds, 0.5))
    called.start()
    wall = time.time() - time.monotonic()
    try:
        call_through(trunk, "uac.xml", "uas_early.xml", int(seconds * 1000), inbound=False,
                     callee_keys={"rtp_port": str(called.port)}, service="0475123456")
    finally:
        called.close()
    [call] = trunk.calls()
    return call, called, [wall + t for t, _ in called.received]


def assert_one_stream(received: list[tuple[float, bytes]]) -> None:
    """The RTP packets a party received (arrival time, packet) form one stream: one SSRC,
    consecutive sequence numbers, timestamps that follow the arrival times (a phone that sees the
    SSRC change, or a jump, drops or clicks)."""
    packets = [(t, parse_rtp(data)) for t, data in received]
    assert len(packets) > 100 and {rtp.ssrc for _, rtp in packets} == {packets[0][1].ssrc}
    for (t0, before), (t1, after) in zip(packets, packets[1:]):
        assert after.sequence == (before.sequence + 1) & 0xFFFF
        # A switch of stream without renumbering jumps by seconds; a loaded machine delays packets by tens of ms.
        assert abs((after.timestamp - before.timestamp) % 2**32 / RATE - (t1 - t0)) < 0.1
    (first_t, first), (last_t, last) = packets[0], packets[-1]
    assert abs((last.timestamp - first.timestamp) % 2**32 / RATE - (last_t - first_t)) < 0.1


def test_an_outgoing_call_plays_the_notice_to_the_called_party_only_once_it_answers(trunk):
    trunk.start()                       # outgoing = "announce" by default
    call, called, arrivals = call_out(trunk, 3.0)
    heard = called.audio()
    answered = datetime.fromisoformat(call["answered_at"]).timestamp()
    notice_at = datetime.fromisoformat(call["notice_played_at"]).timestamp()
    assert call["direction"] == "outgoing" and 0 <= notice_at - answered < 0.05
    # Its media address was known 1.5 s before the 200 OK (the 183's SDP): nothing reached it then.
    assert arrivals and arrivals[0] >= answered
    assert levels(heard, 0.0, NOTICE_S - 0.05)[NOTICE_HZ] > 0.4          # the notice, from the first packet
    assert levels(heard, NOTICE_S + 0.2, 2.5)[CALLER_HZ] > 0.4           # then the shop
    left, right = read_stereo(trunk.folder / "data" / call["file"])     # left: the shop, right: the called party
    assert levels(left, 0.0, NOTICE_S - 0.05)[NOTICE_HZ] > 0.4
    assert_one_stream(called.received)              # the notice, then the shop's packets after it


def beeps(samples: np.ndarray) -> list[float]:
    """Where a 1400 Hz beep starts in `samples` (seconds), found in 50 ms steps."""
    step = int(0.05 * RATE)
    loud = [tone_level(samples[at:at + step], BEEP_HZ) > 0.05 for at in range(0, len(samples) - step, step)]
    return [n * 0.05 for n, on in enumerate(loud) if on and (n == 0 or not loud[n - 1])]


def test_beep_on_a_trunk_sounds_to_both_sides_at_its_interval_and_is_in_the_recording(trunk):
    trunk.start(outgoing="beep", beep_interval_s=5.0)
    call, called, _ = call_out(trunk, 6.5)
    heard = called.audio()
    assert_one_stream(called.received)              # beep, shop, beep, shop
    assert call["notice_played_at"] is None and call["state"] == "complete"
    # The called party hears a beep at the answer and 5 s later, 0.3 s each, the shop in between.
    assert [round(at, 1) for at in beeps(heard)] in ([0.0, 5.0], [0.0, 4.9], [0.0, 5.1])
    assert levels(heard, 1.0, 4.5)[CALLER_HZ] > 0.4 and tone_level(heard[int(1.0 * RATE):int(4.5 * RATE)], BEEP_HZ) < 0.01
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    for channel in (left, right):           # what each side was sent in place of the other's audio
        found = beeps(channel)
        assert len(found) == 2 and abs(found[1] - found[0] - 5.0) < 0.1 and found[0] < 0.2
        assert tone_level(channel[int((found[0] + 0.05) * RATE):int((found[0] + 0.25) * RATE)], BEEP_HZ) > 0.1


def test_a_call_cancelled_while_ringing_is_missed_without_a_recording(trunk):
    trunk.start()
    call_through(trunk, "uac_cancel.xml", "uas_cancel.xml", 0)
    [call] = trunk.calls()
    assert (call["state"], call["direction"], call["number"]) == ("missed", "incoming", "+3225551234")
    assert call["file"] is None and call["end_reason"] == "487 cancelled"
    assert not list((trunk.folder / "data" / SPOOL_DIR).iterdir())


def test_a_reloaded_configuration_gives_the_next_call_the_trunks_new_rules_and_keeps_its_ports(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 1.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 1.0, 0.5), g711.PCMA, 0x2222)
    recorder = trunk.start(notice_incoming=False)
    ports = recorder.trunks[0].config.rtp_port_min
    changed = load_config(trunk.config(notice_incoming=False, purpose="agreement", rtp_timeout_s=7.0))
    assert recorder.reload(changed) == ["sip trunk sip1: its addresses or RTP ports"]   # a new RTP range
    assert recorder.trunks[0].config.rtp_port_min == ports and recorder.trunks[0].proxy.config.rtp_timeout_s == 7.0
    call_through(trunk, "uac.xml", "uas.xml", 1000)
    [call] = trunk.calls()
    assert call["purpose"] == "agreement" and call["state"] == "complete"


def test_hold_and_resume_keep_one_recording_through_the_silence(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 1.5, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 1.5, 0.5), g711.PCMA, 0x2222)
    trunk.start(rtp_timeout_s=1.5, notice_incoming=False)     # the hold is twice the RTP timeout
    call_through(trunk, "uac_hold.xml", "uas_hold.xml", 2000)
    [call] = trunk.calls()
    assert call["state"] == "complete" and call["end_reason"] == "hung up by the caller"
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    assert 6.5 < call["duration_s"] < 8.0
    for channel, freq in ((left, CALLER_HZ), (right, CALLEE_HZ)):
        assert levels(channel, 0.1, 1.3)[freq] > 0.4                  # before the hold
        assert levels(channel, 2.2, 4.8)[freq] < 0.01                 # on hold: silence
        end = call["duration_s"]
        assert levels(channel, end - 1.8, end - 0.7)[freq] > 0.4       # after the resume


def test_a_call_whose_rtp_stops_is_ended_after_the_timeout(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 1.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 1.0, 0.5), g711.PCMA, 0x2222)
    trunk.start(rtp_timeout_s=1.5, notice_incoming=False)
    started = time.monotonic()
    call_through(trunk, "uac_dead.xml", "uas.xml", 0)      # both sides wait for the appliance's BYE
    assert time.monotonic() - started < 8
    [call] = trunk.calls()
    assert call["state"] == "complete" and call["end_reason"].startswith("no RTP from the")
    assert 2.0 < call["duration_s"] < 3.5


def received_byes(folder: Path, scenario: str) -> list[tuple[float, str]]:
    """The BYEs a SIPp party run with -trace_msg received: when each came (epoch s), and its text."""
    [log] = folder.glob(f"{scenario}_*_messages.log")
    found = re.finditer(r"^-+ (\S+ \S+)\n\w+ message received \[\d+\] bytes :\n\n(BYE .*?)\n\n",
                        log.read_text(), re.MULTILINE | re.DOTALL)
    return [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").timestamp(), m[2]) for m in found]


def dead_call(trunk: Trunk, callee: str, **sipp_options) -> None:
    """An incoming call whose RTP stops after 1 s on both sides, the callee being SIPp on `callee`,
    so that the appliance hangs up: both SIPp see their scenario through, and the recording is kept
    with the reason."""
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 1.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 1.0, 0.5), g711.PCMA, 0x2222)
    trunk.start(rtp_timeout_s=1.5, notice_incoming=False)
    uas = sipp(callee, trunk.folder, trunk.phone_port, trunk.media[1], **sipp_options)
    time.sleep(0.2)
    uac = sipp("uac_dead.xml", trunk.folder, trunk.caller_port, trunk.media[0], remote=f"{HOST}:{trunk.trunk_port}",
               duration_ms=0, extra=("-trace_msg",))
    finish(uac, trunk.folder)
    finish(uas, trunk.folder)
    [call] = trunk.calls()
    assert call["state"] == "complete" and call["end_reason"] == "no RTP from the caller for 1.5 s"
    assert (trunk.folder / "data" / call["file"]).stat().st_size > 0 and 2.0 < call["duration_s"] < 3.5


def test_a_bye_of_the_appliance_that_is_lost_is_sent_again_until_it_is_answered(trunk):
    # The callee takes the first BYE as lost (-nr: SIPp does not drop the second as a repeat) and
    # answers the second; both SIPp fail unless they get a BYE and answer it.
    dead_call(trunk, "uas_bye_lost.xml", extra=("-nr", "-trace_msg"))
    (first, bye), (again, repeated) = received_byes(trunk.folder, "uas_bye_lost")   # none after the answer
    assert repeated == bye and client.T1_S - 0.05 < again - first < 2 * client.T1_S
    assert len(received_byes(trunk.folder, "uac_dead")) == 1      # the caller answered the first


def test_a_bye_that_is_never_answered_is_sent_a_bounded_number_of_times_then_given_up(trunk, monkeypatch, caplog):
    # RFC 3261's timers at half their values, to save the test 16 s.
    t1, t2, timer_f = client.T1_S / 2, client.T2_S / 2, client.TIMER_F_S / 2
    for name, value in (("T1_S", t1), ("T2_S", t2), ("TIMER_F_S", timer_f)):
        monkeypatch.setattr(client, name, value)
    caplog.set_level(logging.WARNING)
    dead_call(trunk, "uas_deaf.xml", duration_ms=int((timer_f + 1.5) * 1000), extra=("-trace_msg",))
    byes = received_byes(trunk.folder, "uas_deaf")
    assert {text for _, text in byes} == {byes[0][1]}
    # After T1, 2*T1, 4*T1, then every T2 until 64*T1 have passed: 10 retransmissions.
    gaps = [b[0] - a[0] for a, b in zip(byes, byes[1:])]
    assert len(gaps) == 10, gaps
    for gap, expected in zip(gaps, [t1, 2 * t1, 4 * t1] + [t2] * 7):
        assert expected / 1.5 < gap < expected * 1.5, gaps     # doubling, with room for a loaded machine
    call_id = re.search(r"^Call-ID: (.*)$", byes[0][1], re.MULTILINE)[1]
    [given_up] = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert f"the BYE to the pbx side of call {call_id} got no final answer in {timer_f:g} s" in given_up
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def assert_declined(trunk: Trunk) -> None:
    """The trunk's one call was opted out of: nothing of it is kept, not even the number."""
    [call] = trunk.calls()
    assert (call["state"], call["discard_reason"], call["number"], call["file"]) == \
        ("discarded", "declined", None, None)
    assert call["ended_at"] and trunk.recorder.catalogue.digits(call["id"]) == []
    assert not list((trunk.folder / "data" / SPOOL_DIR).iterdir())
    assert not list((trunk.folder / "data").glob("archive/**/*.flac"))


def test_the_opt_out_key_sent_as_rfc_4733_event_destroys_the_recording(trunk):
    for name in ("key1.pcap", "key2.pcap"):
        shutil.copy(SIPP_PCAPS / "dtmf_2833_9.pcap", trunk.folder / name)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 3.0, 0.5), g711.PCMA, 0x2222)
    trunk.start(optout_digit="9")
    call_through(trunk, "uac_keys.xml", "uas.xml", 500)
    assert_declined(trunk)


def assert_paused(trunk: Trunk, starts: tuple[float, float], ends: tuple[float, float]) -> None:
    """The trunk's one call was paused once by keys, from within `starts` to within `ends`
    (seconds): the shop's tone is kept before and after, and not a sample of it in between."""
    [call] = trunk.calls()
    [(start, end, reason)] = trunk.recorder.catalogue.pauses(call["id"])
    assert reason == "dtmf" and starts[0] < start < starts[1] and ends[0] < end < ends[1]
    _, right = read_stereo(trunk.folder / "data" / call["file"])
    assert levels(right, 0.2, start - 0.05)[CALLEE_HZ] > 0.4
    assert np.abs(right[int(start * RATE) + 8:int(end * RATE) - 8]).max() == 0      # not a sample kept
    assert levels(right, end + 0.1, call["duration_s"] - 0.2)[CALLEE_HZ] > 0.4


def test_the_pause_code_as_rfc_4733_events_writes_silence_until_keyed_again(trunk):
    for name in ("key1.pcap", "key2.pcap"):
        shutil.copy(SIPP_PCAPS / "dtmf_2833_pound.pcap", trunk.folder / name)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 5.0, 0.5), g711.PCMA, 0x2222)
    trunk.start(pause_code="#", notice_incoming=False)
    call_through(trunk, "uac_keys.xml", "uas.xml", 1500)
    assert_paused(trunk, (0.9, 1.4), (2.4, 3.1))


def test_concurrent_calls_are_each_recorded_on_their_own(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 2.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 2.0, 0.5), g711.PCMA, 0x2222)
    recorder = trunk.start(notice_incoming=False)
    seen = []                           # what the web UI's status page reads meanwhile

    def watch():
        while not done.is_set():
            live = read_live(recorder.config.recorder.live_dir)
            seen.extend(live["lines"] if live else [])
            time.sleep(0.2)
    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        call_through(trunk, "uac.xml", "uas.xml", 2000, calls=5)
    finally:
        done.set()
        watcher.join()
    in_call = [line for line in seen if line["name"] == "sip1" and line["state"] == "in_call"]
    assert max(line["calls"] for line in in_call) == 5
    # Each side's real input level: both tones at half scale, about -9 dBFS RMS. A snapshot
    # taken as a tone ends may show one side fading, but never one louder than the tone.
    loud = [line for line in in_call if line["level_dbfs"] is not None and line["level_dbfs"] > -20]
    assert any(all(-12 < side["level_dbfs"] < -6 for side in line["channels"]) for line in loud)
    assert all((side["level_dbfs"] or -99) < -6 for line in loud for side in line["channels"])
    assert all([side["side"] for side in line["channels"]] == ["caller", "callee"] for line in loud)
    calls = trunk.calls()
    assert len(calls) == 5 and len({c["file"] for c in calls}) == 5
    for call in calls:
        assert call["state"] == "complete"
        left, right = read_stereo(trunk.folder / "data" / call["file"])
        assert levels(left, 0.2, 1.8)[CALLER_HZ] > 0.4 and levels(right, 0.2, 1.8)[CALLEE_HZ] > 0.4
        assert levels(left, 0.2, 1.8)[CALLEE_HZ] < 0.01 and levels(right, 0.2, 1.8)[CALLER_HZ] < 0.01


def invite(trunk: Trunk, reply_port: int, n: int, sdp: str | None = None, **headers) -> bytes:
    """An INVITE from the operator, with `headers` replacing or (None) removing some."""
    sdp = sdp if sdp is not None else ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                                       "t=0 0\r\nm=audio 40000 RTP/AVP 8\r\n")
    fields = {"Via": f"SIP/2.0/UDP {HOST}:{reply_port};branch=z9hG4bK-fuzz{n}", "From": f"<sip:111@{HOST}>;tag=f{n}",
              "To": f"<sip:shop@{HOST}>", "Call-ID": f"fuzz-{n}", "CSeq": "1 INVITE", "Max-Forwards": "70",
              "Content-Type": "application/sdp", "Content-Length": str(len(sdp)), **headers}
    head = f"INVITE sip:shop@{HOST}:{trunk.trunk_port} SIP/2.0\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items() if value is not None)
    return (head + "\r\n" + sdp).encode()


def mutate(message: bytes, rng) -> bytes:
    """A message with random damage: flipped bytes, a header line lost or doubled, a cut."""
    data = bytearray(message)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind in (1, 2):
        lines = bytes(data).split(b"\r\n")
        at = rng.randrange(1, len(lines))
        lines[at:at + 1] = [] if kind == 1 else [lines[at], lines[at]]
        data = bytearray(b"\r\n".join(lines))
    else:
        data = data[:rng.randrange(len(data))]
    return bytes(data)


def test_malformed_sip_is_answered_with_an_error_or_dropped_and_never_stops_the_relay(tmp_path):
    import random

    trunk = Trunk(tmp_path)
    config = trunk.config(rtp_ports=1000)
    process = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(0.3)
    port = sock.getsockname()[1]

    def answer(data: bytes) -> int | None:
        sock.sendto(data, (HOST, trunk.trunk_port))
        try:
            reply = sock.recv(65536)
        except socket.timeout:
            return None
        assert reply.startswith(b"SIP/2.0 "), reply[:60]
        return int(reply.split()[1])

    try:
        assert wait_for(lambda: answer(invite(trunk, port, 0, **{"Call-ID": None})) == 400, 15)
        cases = [
            (b"\x00\xff\xfe not SIP at all \x80", None),
            (invite(trunk, port, 1, **{"CSeq": "x INVITE"}), 400),
            (invite(trunk, port, 2, **{"CSeq": "1 BYE"}), 400),
            (invite(trunk, port, 3, **{"Content-Length": "999"}), 400),
            (invite(trunk, port, 4, **{"From": "nobody"}), 400),
            (invite(trunk, port, 5, sdp="v=0\r\nm=audio many RTP/AVP 8\r\n"), 400),
            (invite(trunk, port, 6, sdp="v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 40000 RTP/AVP 4\r\n"), 488),
            (invite(trunk, port, 7, sdp="\xff\xfe"), 400),
            (invite(trunk, port, 8, **{"Max-Forwards": "0"}), 483),
            (invite(trunk, port, 9, **{"Via": "nonsense"}), None),
            (invite(trunk, port, 10).replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL"), 481),
            (invite(trunk, port, 11, To=f"<sip:shop@{HOST}>;tag=gone").replace(b"INVITE sip", b"BYE sip")
             .replace(b"1 INVITE", b"1 BYE"), 481),
            (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n\r\n", None),
            (invite(trunk, port, 12).replace(b"Max-Forwards: 70", b"Max-Forwards 70"), None),
        ]
        for data, expected in cases:
            assert answer(data) == expected, data[:120]
        rng = random.Random(2833)
        sock.settimeout(0.001)
        for n in range(300):
            answer(mutate(invite(trunk, port, 100 + n), rng))
        with socket.create_connection((HOST, trunk.trunk_port)) as tcp:
            tcp.sendall(b"\x16\x03\x01 a TLS hello where SIP was expected " * 4000)
        assert process.poll() is None, "the recorder died"

        # The relay still relays and records.
        write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 1.0, 0.5), g711.PCMA, 0x1111)
        write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 1.0, 0.5), g711.PCMA, 0x2222)
        call_through(trunk, "uac.xml", "uas.xml", 1500)
    finally:
        sock.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    calls = [c for c in calls_json(trunk.folder / "data") if c["state"] != "missed"]
    assert [(c["state"], c["channels"]) for c in calls] == [("complete", 2)]


def test_a_phone_registered_through_the_appliance_gets_its_calls(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 1.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 1.0, 0.5), g711.PCMA, 0x2222)
    trunk.start(pbx_peer=False, notice_incoming=False)      # no PBX: only the registration says where
    registrar = sipp("uas_registrar.xml", trunk.folder, trunk.operator_port, free_port(4), extra=("-trace_msg",))
    time.sleep(0.2)
    phone = sipp("uac_register.xml", trunk.folder, free_port(), free_port(4), remote=f"{HOST}:{trunk.pbx_port}",
                 keys={"phone_port": str(trunk.phone_port)}, extra=("-trace_msg",))
    finish(phone, trunk.folder)
    finish(registrar, trunk.folder)
    [log] = trunk.folder.glob("uas_registrar_*_messages.log")
    assert f"Contact: <sip:201@{HOST}:{trunk.trunk_port}>" in log.read_text()   # the operator calls the appliance
    [log] = trunk.folder.glob("uac_register_*_messages.log")
    assert f"Contact: <sip:201@{HOST}:{trunk.phone_port}>;expires=300" in log.read_text()  # the phone sees its own
    call_through(trunk, "uac.xml", "uas.xml", 1500, service="201")
    [call] = trunk.calls()
    assert call["state"] == "complete" and call["direction"] == "incoming"


def test_a_session_timer_that_is_not_refreshed_ends_the_call(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 3.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 3.0, 0.5), g711.PCMA, 0x2222)
    trunk.start(notice_incoming=False)
    call_through(trunk, "uac_dead.xml", "uas_timer.xml", 0)     # both wait for the appliance's BYE
    [call] = trunk.calls()
    assert call["end_reason"] == "session timer expired" and 1.8 < call["duration_s"] < 3.0


def test_a_call_in_progress_when_the_recorder_is_killed_is_recovered_at_the_next_start(trunk):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 6.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 6.0, 0.5), g711.PCMA, 0x2222)
    config = trunk.config(notice_incoming=False)
    run = [sys.executable, "-m", "appliance", "run", "--config", str(config)]
    first = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    uas = sipp("uas.xml", trunk.folder, trunk.phone_port, trunk.media[1])
    uac = sipp("uac.xml", trunk.folder, trunk.caller_port, trunk.media[0], remote=f"{HOST}:{trunk.trunk_port}",
               duration_ms=6000)
    spool = trunk.folder / "data" / SPOOL_DIR
    try:
        assert wait_for(lambda: any(spool.glob("*.wav")), 10)
        answered = time.monotonic()
        time.sleep(3.0)
        first.kill()
        first.wait()
        lived = time.monotonic() - answered
    finally:
        for process in (uac, uas):
            process.kill()
            process.wait()
    second = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    [call] = calls_json(trunk.folder / "data")
    assert (call["state"], call["channels"]) == ("interrupted", 2)
    assert lived - 2.0 < call["duration_s"] < lived + 0.1       # a kill -9 loses under 2 s
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    end = call["duration_s"] - 0.1
    assert levels(left, 0.2, end)[CALLER_HZ] > 0.4 and levels(right, 0.2, end)[CALLEE_HZ] > 0.4


class Defect(BaseException):
    """Escapes every `except Exception`: a bug that ends the thread it happens in."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stuck_relay_or_a_dead_store_thread_is_seen_by_the_watchdog_the_live_state_and_the_doctor(trunk):
    from appliance.doctor import FAIL, OK, check_live_trunk, line_states

    recorder = trunk.start()
    live_dir = recorder.config.recorder.live_dir
    assert wait_for(lambda: read_live(live_dir) is not None, 5)
    assert recorder.problem(1.0) is None
    assert check_live_trunk("sip1", line_states([read_live(live_dir)], "sip1")).status == OK
    sip = recorder.trunks[0]
    sip.loop.call_soon_threadsafe(time.sleep, 3.0)          # the relay's loop blocks
    assert wait_for(lambda: "relay's loop made no progress" in (recorder.problem(1.0) or ""), 3)
    assert wait_for(lambda: recorder.problem(1.0) is None, 5)       # and recovers

    def defect():
        raise Defect("a bug")
    sip.line.worker.submit(defect)
    dead = "sip trunk sip1: sip-store-sip1 died (Defect: a bug)"
    assert wait_for(lambda: recorder.problem(1.0) == dead, 3)
    assert wait_for(lambda: read_live(live_dir)["lines"][0].get("problem") == dead, 3)
    result = check_live_trunk("sip1", line_states([read_live(live_dir)], "sip1"))
    assert result.status == FAIL and dead in result.message and "journalctl" in result.fix
    from appliance.faultled import TRUNK_DOWN
    assert TRUNK_DOWN in recorder.faults()
