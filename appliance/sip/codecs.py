"""The voice codecs the trunk relays and records: what each payload type is, one stream's decoder,
and the 20 ms packets of a sound the relay plays (the notice, the beep).

Every codec kept here has a static payload type and an 8000 Hz RTP clock (RFC 3551), so the
relay's timestamps count the same for all of them; G.722 samples at 16 kHz though its clock says
8000. G.711 is decoded by g711.py's tables, the others by the FFmpeg that PyAV brings (decoders
for G.722, G.729 and GSM 06.10; an encoder for G.722 only, so G.729 and GSM calls take the notice
in G.711 when their answer allows it). A wideband call (G.722 at the answer) is recorded at 16 kHz,
the others at 8 kHz; a packet in a codec of the other rate is resampled to the call's.
"""

import logging
from dataclasses import dataclass

import av

from appliance.sip import g711

log = logging.getLogger(__name__)

NARROWBAND, WIDEBAND = 8000, 16000
RTP_CLOCK = 8000            # every codec below: G.722's too (RFC 3551, 4.5.2)
PACKET_S = 0.02             # the sounds the relay plays go out in 20 ms packets
G722, G729, GSM = 9, 18, 3
SID_BYTES = 2               # a G.729 Annex B comfort-noise frame, after the speech frames


@dataclass(frozen=True)
class Codec:
    """A codec the appliance records: its SDP name, the rate it samples at, its FFmpeg decoder
    (None: G.711's tables) and whether the relay can encode a sound in it."""

    name: str
    rate: int
    ffmpeg: str | None
    encodes: bool


CODECS = {
    g711.PCMU: Codec("PCMU", NARROWBAND, None, True),
    g711.PCMA: Codec("PCMA", NARROWBAND, None, True),
    G722: Codec("G722", WIDEBAND, "g722", True),
    G729: Codec("G729", NARROWBAND, "g729", False),
    GSM: Codec("GSM", NARROWBAND, "gsm", False),
}


def call_rate(payload_type: int | None) -> int:
    """The rate a call is recorded at when its answer puts `payload_type` first."""
    return WIDEBAND if payload_type == G722 else NARROWBAND


def playable(payloads) -> int | None:
    """The first of a stream's payload types that the relay can send a sound in, or None."""
    return next((pt for pt in payloads if pt in CODECS and CODECS[pt].encodes), None)


def _context(name: str, mode: str, rate: int) -> av.CodecContext:
    context = av.CodecContext.create(name, mode)
    context.sample_rate = rate
    context.layout = "mono"
    if mode == "w":
        context.format = "s16"
    return context


def _pcm(frame: av.AudioFrame) -> bytes:
    return bytes(frame.planes[0])[:2 * frame.samples]       # mono s16: the plane may be padded


class Decoder:
    """One RTP stream's decoder (a channel's SSRC in one payload type): s16le at the call's rate.
    G.722's ADPCM carries state from packet to packet, so a stream keeps its own."""

    def __init__(self, payload_type: int, rate: int):
        codec = CODECS[payload_type]
        self.payload_type = payload_type
        self.context = _context(codec.ffmpeg, "r", codec.rate) if codec.ffmpeg else None
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=rate) if codec.rate != rate else None
        self.codec_rate = codec.rate

    def decode(self, payload: bytes) -> bytes:
        """One packet's audio; nothing for a packet the decoder refuses (damaged, or only comfort
        noise)."""
        if self.context is None:
            pcm = g711.decode(payload, self.payload_type)
            if self.resampler is None:
                return pcm
            frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
            frame.planes[0].update(pcm)
            frame.sample_rate = self.codec_rate
            frames = [frame]
        else:
            if self.payload_type == G729 and len(payload) % 10 == SID_BYTES:
                payload = payload[:-SID_BYTES]      # Annex B's silence description: left silent
            if not payload:
                return b""
            try:
                frames = self.context.decode(av.Packet(payload))
            except av.FFmpegError:
                return b""
        if self.resampler is not None:
            frames = [out for frame in frames for out in self.resampler.resample(frame)]
        return b"".join(map(_pcm, frames))


def packets(pcm: bytes, rate: int, payload_type: int) -> list[bytes]:
    """Mono s16le `pcm` at `rate` (the codec's own) as 20 ms RTP payloads in `payload_type`, the
    last one filled with silence. Slow for the relay's loop: made when a trunk starts or reloads."""
    step = round(rate * PACKET_S) * 2
    pcm += bytes(-len(pcm) % step)
    if CODECS[payload_type].ffmpeg is None:
        codes = g711.encode(pcm, payload_type)
        return [codes[at:at + step // 2] for at in range(0, len(codes), step // 2)]
    encoder = _context(CODECS[payload_type].ffmpeg, "w", rate)
    out = []
    for at in range(0, len(pcm), step):
        frame = av.AudioFrame(format="s16", layout="mono", samples=step // 2)
        frame.planes[0].update(pcm[at:at + step])
        frame.sample_rate, frame.pts = rate, at // 2
        out += [bytes(packet) for packet in encoder.encode(frame)]
    out += [bytes(packet) for packet in encoder.encode(None)]
    return out


@dataclass(frozen=True)
class Sound:
    """A sound the relay plays into calls (the notice, the beep): its PCM at each rate a call is
    recorded at, and its 20 ms payloads in each codec the relay can encode."""

    pcm: dict[int, bytes]
    payloads: dict[int, list[bytes]]


def sound(make) -> Sound:
    """The sound `make(rate)` (mono s16le at `rate`) ready for every call: made off the relay's loop."""
    pcm = {rate: make(rate) for rate in (NARROWBAND, WIDEBAND)}
    return Sound(pcm, {pt: packets(pcm[codec.rate], codec.rate, pt) for pt, codec in CODECS.items() if codec.encodes})
