"""RTP pcaps of a phone whose keys are in its audio: G.711 with DTMF tones in it, and, for a phone
that also sends its keys as RFC 4733 telephone events, each press's events in the same stream (as
many phones do: the event, and the tone left in the audio)."""

import struct
from pathlib import Path

import numpy as np

from appliance.dtmf import KEYS
from appliance.scenario import dtmf_tone
from appliance.sip import g711
from conftest import RATE
from sipp.harness import g711_codes, write_rtp_pcap

DBM0_TO_DBFS = -3.14        # a 0 dBm0 sine is 3.14 dB under full scale (G.711 A-law)
PACKET = 160                # samples in 20 ms
EVENT_PT = 101              # as tests/sipp's scenarios offer telephone-event
EVENT_CODES = {key: code for code, key in enumerate("0123456789*#ABCD")}


def with_key(samples: np.ndarray, key: str, at_s: float, seconds: float = 0.12, dbm0: float = -10.0,
             rate: int = RATE) -> np.ndarray:
    """`samples` (at `rate`) with the tone of `key` added from `at_s`, each of its two frequencies at `dbm0`."""
    assert any(key in row for row in KEYS), key
    out = samples.copy()
    tone = dtmf_tone(key, rate, seconds, 10 ** ((dbm0 + DBM0_TO_DBFS) / 20))
    start = int(at_s * rate)
    out[start:start + len(tone)] += tone[:len(out) - start]
    return out


def write_keyed_pcap(path: Path, samples: np.ndarray, ssrc: int, events: tuple = (),
                     payload_type: int = g711.PCMA) -> Path:
    """Write float samples as 20 ms G.711 RTP packets, with the RFC 4733 events of each
    (key, at_s, seconds) press in `events` in the same stream, as a pcap SIPp can play."""
    codes = g711_codes(samples, payload_type)
    packets = []            # (seconds, order, RTP without its sequence number)
    for index in range(len(codes) // PACKET):
        packets.append((index * 0.02, 0, payload_type | (0x80 if index == 0 else 0), index * PACKET,
                        codes[index * PACKET:(index + 1) * PACKET]))
    for key, at_s, seconds in events:
        first = int(at_s * RATE) // PACKET          # the packet in which the press begins
        count = max(1, round(seconds / 0.02))
        for n in range(count + 2):                  # updates every 20 ms, the end sent three times
            end = n >= count - 1
            duration = PACKET * min(n + 1, count)
            payload = struct.pack("!BBH", EVENT_CODES[key], (0x80 if end else 0) | 10, duration)
            packets.append(((first + min(n, count - 1)) * 0.02, 1 + n, EVENT_PT | (0x80 if n == 0 else 0),
                            first * PACKET, payload))
    return write_rtp_pcap(path, [
        (t, struct.pack("!BBHII", 0x80, marker_type, 1000 + sequence, timestamp + PACKET, ssrc) + payload)
        for sequence, (t, _, marker_type, timestamp, payload) in enumerate(sorted(packets))])
