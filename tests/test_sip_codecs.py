"""Codecs other than G.711 through a SIP trunk of the real recorder: a G.722 call is recorded
wideband (at 16 kHz: a 6 kHz tone is kept) with the notice in G.722, from SIPp and from baresip;
G.729 and GSM calls (their RTP from bcg729 and libgsm, not from the appliance's FFmpeg) are relayed
and recorded, with G.711 put first in the offer passed on, and without a notice when the answer
leaves no codec the appliance can send it in (with it in G.711 when the answer lists G.711 too)."""

import shutil
import subprocess
import time

import av
import numpy as np
import pytest

from appliance.codec import decode_to_pcm
from appliance.sip.media import parse_rtp
from conftest import tone, tone_level
from sipp.baresip import BARESIP, Baresip
from sipp.harness import HOST, RtpEndpoint, finish, read_stereo, sipp, write_payloads_pcap
from sipp.keyed import with_key
from sipp.vocoders import G729, Gsm
from test_sip import CALLEE_HZ, CALLER_HZ, NOTICE_HZ, NOTICE_S, assert_one_stream, best_match, call_through, \
    trunk  # noqa: F401 (fixture)

WIDE = 16000
WIDE_HZ = 6000.0            # above 4 kHz: only a wideband recording keeps it
G722 = 9
G722_KEYS = {"pt": "9", "codec": "G722"}


@pytest.fixture(scope="module")
def wideband_speech(tmp_path_factory) -> np.ndarray:
    """A spoken sentence from espeak-ng at 16 kHz (its sibilants reach past 4 kHz)."""
    raw = tmp_path_factory.mktemp("speech") / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-w", str(raw),
                    "Six boxes of fresh tomatoes, and a sack of potatoes, please."], check=True)
    return np.frombuffer(decode_to_pcm(raw, WIDE), dtype="<i2") / 32768.0


def caller_voice(seconds: float) -> np.ndarray:
    """What the caller sends on a wideband call: a 6 kHz tone and a 440 Hz one, at 16 kHz."""
    return tone(WIDE_HZ, seconds, 0.3, WIDE) + tone(CALLER_HZ, seconds, 0.3, WIDE)


def g722_payloads(samples: np.ndarray) -> list[bytes]:
    """Float samples at 16 kHz as 20 ms G.722 payloads (64 kbit/s: 160 bytes each)."""
    encoder = av.CodecContext.create("g722", "w")
    encoder.sample_rate, encoder.layout, encoder.format = WIDE, "mono", "s16"
    pcm = (np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2")
    payloads = []
    for at in range(0, len(pcm) - 319, 320):
        frame = av.AudioFrame.from_ndarray(pcm[at:at + 320].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = WIDE, at
        payloads += [bytes(packet) for packet in encoder.encode(frame)]
    return payloads


def g722_audio(received: list[tuple[float, bytes]]) -> np.ndarray:
    """The G.722 packets a party received, decoded at 16 kHz in arrival order."""
    decoder = av.CodecContext.create("g722", "r")
    decoder.sample_rate, decoder.layout = WIDE, "mono"
    packets = [parse_rtp(data) for _, data in received]
    assert {packet.payload_type for packet in packets} == {G722}
    frames = [frame for packet in packets for frame in decoder.decode(av.Packet(packet.payload))]
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]) / 32768.0


def level(samples: np.ndarray, freq: float, start_s: float, end_s: float, rate: int = WIDE) -> float:
    """The level of `freq` in a stretch of audio at `rate`."""
    return tone_level(samples[int(start_s * rate):int(end_s * rate)], freq, rate)


def stretch(samples: np.ndarray, start_s: float, end_s: float, rate: int = WIDE) -> np.ndarray:
    """A stretch of audio at `rate`."""
    return samples[int(start_s * rate):int(end_s * rate)]


def assert_wideband_recording(trunk, speech: np.ndarray, start_s: float) -> None:
    """The trunk's one call was recorded at 16 kHz: the caller's 6 kHz tone in the left channel,
    the notice and then the shop's speech in the right."""
    [call] = trunk.calls()
    assert (call["state"], call["sample_rate"], call["channels"]) == ("complete", WIDE, 2)
    assert call["notice_played_at"]
    left, right = read_stereo(trunk.folder / "data" / call["file"], WIDE)
    assert level(left, WIDE_HZ, 0.2, 3.0) > 0.15 and level(left, CALLER_HZ, 0.2, 3.0) > 0.2
    assert level(right, NOTICE_HZ, 0.05, NOTICE_S - 0.05) > 0.3
    assert best_match(stretch(right, start_s, start_s + 0.8), speech) > 0.9


def test_a_g722_call_is_recorded_at_16_khz_and_the_caller_hears_the_notice_then_the_shop_in_one_stream(
        trunk, wideband_speech):
    write_payloads_pcap(trunk.folder / "callee.pcap", g722_payloads(wideband_speech), G722, 0x2222)
    trunk.start()
    caller = RtpEndpoint(None, G722, g722_payloads(caller_voice(4.0)))
    caller.start()
    try:
        call_through(trunk, "uac_quiet.xml", "uas.xml", 4000, caller_keys={"rtp_port": str(caller.port), **G722_KEYS},
                     callee_keys=G722_KEYS)
    finally:
        caller.close()
    # The caller got G.722 only, as one stream: the notice, then the shop's packets renumbered
    # after it (160 bytes per 20 ms on the 8000 Hz clock).
    assert_one_stream(caller.received)
    heard = g722_audio(caller.received)
    assert level(heard, NOTICE_HZ, 0.05, NOTICE_S - 0.05) > 0.3
    assert best_match(stretch(heard, 1.2, 2.0), wideband_speech) > 0.9
    assert_wideband_recording(trunk, wideband_speech, 1.2)


@pytest.mark.skipif(shutil.which(BARESIP) is None, reason="baresip is not installed")
def test_a_softphone_offering_only_g722_hears_the_notice_and_the_shop_and_is_recorded_wideband(trunk, wideband_speech):
    write_payloads_pcap(trunk.folder / "callee.pcap", g722_payloads(wideband_speech), G722, 0x2222)
    trunk.start()
    phone = Baresip(trunk.folder / "baresip", caller_voice(8.0), codecs="G722", rate=WIDE)
    shop = sipp("uas.xml", trunk.folder, trunk.phone_port, trunk.media[1], keys=G722_KEYS)
    time.sleep(0.2)
    phone.call(f"sip:shop@{HOST}:{trunk.trunk_port}", 6)
    finish(shop, trunk.folder)

    assert phone.said("Call established") and not phone.said("SSRC changed")
    heard = phone.heard(WIDE)                       # decoded by baresip's own G.722
    assert level(heard, NOTICE_HZ, 0.05, NOTICE_S - 0.05) > 0.3
    assert best_match(stretch(heard, 1.5, 2.3), wideband_speech) > 0.9
    assert_wideband_recording(trunk, wideband_speech, 1.5)


def test_a_pause_keyed_as_tones_in_a_g722_call_is_heard_in_its_16_khz_audio(trunk):
    quiet = np.random.default_rng(7).normal(0, 0.001, 4 * WIDE)          # the caller listens
    keyed = with_key(with_key(quiet, "#", 1.0, rate=WIDE), "#", 2.5, rate=WIDE)
    write_payloads_pcap(trunk.folder / "caller.pcap", g722_payloads(keyed), G722, 0x1111)
    write_payloads_pcap(trunk.folder / "callee.pcap", g722_payloads(tone(CALLEE_HZ, 4.0, 0.5, WIDE)), G722, 0x2222)
    trunk.start(pause_code="#", notice_incoming=False)
    call_through(trunk, "uac_no_events.xml", "uas_no_events.xml", 3500, caller_keys=G722_KEYS, callee_keys=G722_KEYS)
    [call] = trunk.calls()
    [(start, end, reason)] = trunk.recorder.catalogue.pauses(call["id"])
    assert (call["sample_rate"], reason) == (WIDE, "dtmf") and 0.95 < start < 1.1 and 2.45 < end < 2.7
    _, right = read_stereo(trunk.folder / "data" / call["file"], WIDE)
    assert level(right, CALLEE_HZ, 0.2, start - 0.05) > 0.4 and level(right, CALLEE_HZ, end + 0.1, 3.3) > 0.4
    assert np.abs(right[int(start * WIDE) + 16:int(end * WIDE) - 16]).max() == 0     # not a sample kept


@pytest.mark.parametrize("vocoder", [G729, Gsm], ids=["G729", "GSM"])
def test_a_call_in_a_codec_the_notice_cannot_be_sent_in_is_recorded_and_g711_is_offered_first(
        trunk, speech, vocoder):
    codec = vocoder()
    voice = np.frombuffer(decode_to_pcm(speech, 8000), dtype="<i2") / 32768.0
    sent = codec.encode(voice)
    write_payloads_pcap(trunk.folder / "caller.pcap", sent, codec.payload_type, 0x1111)
    write_payloads_pcap(trunk.folder / "callee.pcap", codec.encode(tone(CALLEE_HZ, 3.0, 0.3)), codec.payload_type,
                        0x2222)
    trunk.start()
    pt = str(codec.payload_type)
    # The caller offers its codec first, then G.711; the shop answers in the caller's codec alone.
    shop = sipp("uas.xml", trunk.folder, trunk.phone_port, trunk.media[1], keys={"pt": pt, "codec": codec.name},
                extra=("-trace_msg",))
    time.sleep(0.2)
    caller = sipp("uac_offer.xml", trunk.folder, trunk.caller_port, trunk.media[0],
                  remote=f"{HOST}:{trunk.trunk_port}", duration_ms=3000, keys={"formats": f"{pt} 8 101"})
    finish(caller, trunk.folder)
    finish(shop, trunk.folder)

    [log] = trunk.folder.glob("uas_*_messages.log")
    assert f"RTP/AVP 8 {pt} 101\n" in log.read_text()          # G.711 first in the offer passed on
    [call] = trunk.calls()
    assert (call["state"], call["sample_rate"], call["notice_played_at"]) == ("complete", 8000, None)
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    reference = codec.decode(sent)                  # the caller's audio through an independent decoder
    assert best_match(stretch(left, 0.5, 1.5, 8000), reference) > 0.9
    assert level(right, CALLEE_HZ, 0.2, 2.5, 8000) > 0.2 and level(left, CALLEE_HZ, 0.2, 2.5, 8000) < 0.01


def test_a_g729_call_whose_answer_also_lists_g711_gets_the_notice_in_g711_then_g729_in_one_stream(trunk):
    codec = G729()
    write_payloads_pcap(trunk.folder / "caller.pcap", codec.encode(tone(CALLER_HZ, 3.0, 0.3)), codec.payload_type,
                        0x1111)
    write_payloads_pcap(trunk.folder / "callee.pcap", codec.encode(tone(CALLEE_HZ, 3.0, 0.3)), codec.payload_type,
                        0x2222)
    trunk.start()
    caller = RtpEndpoint(None, payloads=[])         # only listens: SIPp sends the caller's RTP
    caller.start()
    shop = sipp("uas_answer.xml", trunk.folder, trunk.phone_port, trunk.media[1], keys={"formats": "18 8 101"})
    time.sleep(0.2)
    try:
        call = sipp("uac_offer.xml", trunk.folder, trunk.caller_port, trunk.media[0],
                    remote=f"{HOST}:{trunk.trunk_port}", duration_ms=3000,
                    keys={"formats": "18 8 101", "rtp_port": str(caller.port)})
        finish(call, trunk.folder)
        finish(shop, trunk.folder)
    finally:
        caller.close()
    # The notice in G.711 A-law (G.729 has no encoder here), then the shop's G.729, one stream.
    assert_one_stream(caller.received)
    kinds = [parse_rtp(data).payload_type for _, data in caller.received]
    notice = kinds.index(codec.payload_type)
    assert set(kinds[:notice]) == {8} and set(kinds[notice:]) == {codec.payload_type}
    assert abs(notice * 0.02 - NOTICE_S) < 0.05
    heard = caller.audio()                          # the G.711 part
    assert level(heard, NOTICE_HZ, 0.05, NOTICE_S - 0.05, 8000) > 0.4
    assert level(codec.decode([parse_rtp(data).payload for _, data in caller.received[notice:]]),
                 CALLEE_HZ, 0.2, 1.5, 8000) > 0.2
    [row] = trunk.calls()
    assert (row["state"], row["sample_rate"]) == ("complete", 8000) and row["notice_played_at"]
    left, right = read_stereo(trunk.folder / "data" / row["file"])
    assert level(right, NOTICE_HZ, 0.05, NOTICE_S - 0.05, 8000) > 0.4
    assert level(right, CALLEE_HZ, NOTICE_S + 0.2, 2.5, 8000) > 0.2 and level(left, CALLER_HZ, 0.2, 2.5, 8000) > 0.2
